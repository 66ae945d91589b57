//! Faults against a real broker (tansu, as `.ci/run` starts it), each test
//! named for what it proves. `keywatch run` runs here as the real binary in
//! a child process, so that it can be killed with SIGKILL as an operator's
//! machine would kill it:
//!
//! - twenty-odd `kill -9` at seeded random points of a run, with the input
//!   arriving between kills: the distinct alert ids on the alerts topic are
//!   exactly those of `keywatch replay` over the same input (none lost, none
//!   repeated under a new id), and every restart resumes within seconds;
//! - the broker killed and restarted under a running instance (tansu keeps
//!   its data in memory, so the topics are gone and are made again, as an
//!   operator would): keywatch keeps retrying, does not exit, and processes
//!   the new input once the broker is back;
//! - garbage written over a partition's checkpoint manifest: the next
//!   instance does not crash-loop, says so loudly, and processes every
//!   partition;
//! - an input record just under the broker's 1 MiB limit that the decoder
//!   rejects, and an alert whose evidence embeds a huge endpoint: neither
//!   stops the group; the dead letter is truncated and says how big the
//!   original was.
//!
//! Without `KEYWATCH_TEST_BROKERS` each test says why and returns; with it
//! set and the broker unreachable each fails ([`real_brokers`]). The seed of
//! the kill test is printed and can be set with `KEYWATCH_FAULT_SEED`;
//! `KEYWATCH_FAULT_LOG` sets the children's log filter (default
//! `keywatch=info`), whose tail a failure prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use keywatch::checkpoint::PartitionId;
use keywatch::config::Config;
use keywatch::detector::Detector;
use keywatch::enrich::test_world;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::kafka_support::*;

/// Kills of the kill test.
const KILLS: usize = 20;
/// Default seed of the kill points.
const KILL_SEED: u64 = 10_009;
/// Longest time a restarted instance may take to process its first record.
/// Without static membership a restart waits for the dead member's session
/// (6 s in the test config) to time out, a few seconds. tansu now and then
/// leaves the restarted member with an empty assignment after that; the
/// idle-member rejoin (`rejoin_idle_after`, 5 s here, judged at two lag
/// checks 10 s apart) recovers it in about 25 s, so the bound allows for one.
const RESUME_BOUND: Duration = Duration::from_secs(45);
/// `rejoin_idle_after` of the fault tests.
const REJOIN_IDLE_AFTER: Duration = Duration::from_secs(5);
/// Longest time an instance may take to catch up with the input.
const CATCH_UP: Duration = Duration::from_secs(120);

/// Writes the test world's City and ASN databases into `dir`.
fn write_geoip(dir: &Path) -> (PathBuf, PathBuf) {
    let (city_db, asn_db) = test_world::place_databases(test_world::PLACES).expect("test world databases");
    let city = dir.join("city.mmdb");
    let asn = dir.join("asn.mmdb");
    std::fs::write(&city, city_db).expect("write city db");
    std::fs::write(&asn, asn_db).expect("write asn db");
    (city, asn)
}

/// A test configuration (see [`test_config`]) over `brokers` that uses the
/// test world's GeoIP databases written into `dir`.
fn fault_config(brokers: &str, prefix: &str, dir: &Path) -> Config {
    let (city, asn) = write_geoip(dir);
    let mut config = test_config(brokers, prefix, true);
    kafka_of_mut(&mut config).rejoin_idle_after = REJOIN_IDLE_AFTER;
    config.geoip.city = Some(city);
    config.geoip.asn = Some(asn);
    // `KEYWATCH_TEST_CHANGELOG_FORMAT=full` runs the faults against whole
    // checkpoints (the default is incremental).
    if std::env::var("KEYWATCH_TEST_CHANGELOG_FORMAT").is_ok_and(|format| format == "full") {
        config.kafka.as_mut().expect("kafka section").changelog_format = keywatch::config::kafka::ChangelogFormat::Full;
    }
    config
}

/// The last lines of a log file, for failure messages.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The value of an unlabelled metric in a Prometheus text body.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The committed next offsets of `stage` on `topic`, by partition, from the
/// `keywatch_committed_offset` gauges.
fn committed_offsets(body: &str, stage: &str, topic: &str) -> BTreeMap<i32, i64> {
    let stage_label = format!("stage=\"{stage}\"");
    let topic_label = format!("topic=\"{topic}\"");
    body.lines()
        .filter(|line| line.starts_with("keywatch_committed_offset{"))
        .filter(|line| line.contains(&stage_label) && line.contains(&topic_label))
        .filter_map(|line| {
            let partition = line.split("partition=\"").nth(1)?.split('"').next()?.parse().ok()?;
            let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
            Some((partition, value as i64))
        })
        .collect()
}

/// `keywatch run` in a child process, serving metrics on its own port and
/// logging at info into `log`. Dropping it kills it.
struct RunProcess {
    child: Child,
    metrics_port: u16,
    started: Instant,
    log: PathBuf,
}

impl RunProcess {
    fn spawn(dir: &Path, config: &Config, log: &Path) -> RunProcess {
        let metrics_port = free_port();
        let mut config = config.clone();
        kafka_of_mut(&mut config).metrics_listen = Some(([127, 0, 0, 1], metrics_port).into());
        let path = dir.join("run.toml");
        std::fs::write(&path, toml::to_string(&config).expect("the config as TOML")).expect("write the config");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the run log");
        let child = Command::new(env!("CARGO_BIN_EXE_keywatch"))
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env(
                "KEYWATCH_LOG",
                std::env::var("KEYWATCH_FAULT_LOG").unwrap_or_else(|_| "keywatch=info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("keywatch run starts");
        RunProcess {
            child,
            metrics_port,
            started: Instant::now(),
            log: log.to_path_buf(),
        }
    }

    /// Panics, with the log's tail, if the process has exited.
    fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().expect("wait on keywatch run") {
            panic!(
                "keywatch run exited ({status}) {what}; its log ends:\n{}",
                tail(&self.log)
            );
        }
    }

    fn scrape(&self) -> Option<String> {
        scrape(self.metrics_port)
    }

    /// Waits until the process has processed a record; returns how long
    /// that took from its start.
    async fn wait_first_progress(&mut self, timeout: Duration) -> Duration {
        loop {
            self.assert_running("before processing a record");
            let records = self
                .scrape()
                .and_then(|body| metric(&body, "keywatch_records_total"))
                .unwrap_or(0.0);
            if records > 0.0 {
                return self.started.elapsed();
            }
            assert!(
                self.started.elapsed() < timeout,
                "keywatch run processed no record within {timeout:?} of its start; its log ends:\n{}",
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this process has committed `stage` on `topic` up to
    /// `ends` (partitions with no record are not waited for).
    async fn wait_caught_up(&mut self, stage: &str, topic: &str, ends: &BTreeMap<i32, i64>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.assert_running("before catching up");
            let body = self.scrape().unwrap_or_default();
            let committed = committed_offsets(&body, stage, topic);
            let lagging: Vec<(i32, Option<i64>, i64)> = ends
                .iter()
                .filter(|(_, end)| **end > 0)
                .map(|(partition, end)| (*partition, committed.get(partition).copied(), *end))
                .filter(|(_, committed, end)| *committed != Some(*end))
                .collect();
            if lagging.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "keywatch run did not catch up on {topic} within {timeout:?}: (partition, committed, end) {lagging:?}, {:?} records processed since its start; its log ends:\n{}",
                metric(&body, "keywatch_records_total"),
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no final batch, checkpoint or commit.
    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait on keywatch run") {
                return status;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!(
                    "keywatch run did not stop within {timeout:?} of SIGTERM; its log ends:\n{}",
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill9();
        }
    }
}

/// The distinct alert ids of `keywatch replay` over `records`, written in
/// order to one file, with the databases of `config`.
fn replay_alert_ids(dir: &Path, config: &Config, records: &[ScenarioRecord]) -> BTreeSet<String> {
    let input = dir.join("replay-input.jsonl");
    let text: String = records.iter().map(|record| format!("{}\n", record.payload)).collect();
    std::fs::write(&input, text).expect("write the replay input");
    let out = dir.join("replay-out");
    let output = Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .arg("replay")
        .arg("--input")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .arg("--geoip-city")
        .arg(config.geoip.city.as_ref().expect("city db"))
        .arg("--geoip-asn")
        .arg(config.geoip.asn.as_ref().expect("asn db"))
        .arg("--no-progress")
        .output()
        .expect("keywatch replay runs");
    assert!(
        output.status.success(),
        "keywatch replay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(out.join("alerts.jsonl"))
        .expect("replay alerts")
        .lines()
        .map(|line| {
            let alert: serde_json::Value = serde_json::from_str(line).expect("an alert line");
            alert["id"].as_str().expect("an alert id").to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kill_9_at_random_points_lose_no_alert_repeat_none_under_a_new_id_and_each_restart_resumes_within_seconds()
 {
    let test = "twenty_kill_9_at_random_points_lose_no_alert_repeat_none_under_a_new_id_and_each_restart_resumes_within_seconds";
    let Some(brokers) = real_brokers(test) else {
        return;
    };
    let seed = std::env::var("KEYWATCH_FAULT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(KILL_SEED);
    eprintln!("{test}: seed {seed} (KEYWATCH_FAULT_SEED)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = fault_config(&brokers, &unique_prefix("kw-kill9"), dir.path());
    let kafka = kafka_of(&config).clone();
    let input = kafka.input_topics[0].clone();
    create_topics(&brokers, &[(input.as_str(), PARTITIONS)]).await;

    let records = travel_scenario(40, 60, 101);
    let expected = replay_alert_ids(dir.path(), &config, &records);
    assert!(expected.len() >= 20, "the replay flags every traveller: {expected:?}");

    // The input arrives in slices, one before each start, so that every
    // restart finds records waiting and its resume can be timed.
    let slice_len = records.len().div_ceil(KILLS + 1);
    let mut slices = records.chunks(slice_len);
    let log = dir.path().join("run.log");
    let mut resumes: Vec<Duration> = Vec::new();
    let mut startup_kills = 0;
    for cycle in 0..KILLS {
        let slice = slices.next().expect("a slice per start");
        produce_unbatched(&brokers, &input, slice, Placement::KeyedByKeyId).await;
        let mut run = RunProcess::spawn(dir.path(), &config, &log);
        // One kill in five lands during start-up (joining, restoring), the
        // others at a random moment of processing.
        if rng.random_ratio(1, 5) {
            let delay = Duration::from_millis(rng.random_range(50..1500));
            tokio::time::sleep(delay).await;
            run.assert_running("during start-up");
            run.kill9();
            startup_kills += 1;
            eprintln!("kill {cycle}: {delay:?} after the start");
            continue;
        }
        let resumed = run.wait_first_progress(Duration::from_secs(90)).await;
        if cycle > 0 {
            resumes.push(resumed);
        }
        let delay = Duration::from_millis(rng.random_range(0..1500));
        tokio::time::sleep(delay).await;
        run.assert_running("while processing");
        run.kill9();
        eprintln!("kill {cycle}: first record {resumed:?} after the start, killed {delay:?} later");
    }
    for slice in slices {
        produce_unbatched(&brokers, &input, slice, Placement::KeyedByKeyId).await;
    }
    let mut run = RunProcess::spawn(dir.path(), &config, &log);
    resumes.push(run.wait_first_progress(Duration::from_secs(90)).await);
    let ends = end_offsets(&brokers, &input);
    run.wait_caught_up("keyed", &input, &ends, CATCH_UP).await;
    let status = run.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "a clean stop after the kills: {status}\n{}",
        tail(&log)
    );

    let alerts = read_alerts(&brokers, &kafka.alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    let slowest = resumes.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{test}: {KILLS} kills ({startup_kills} during start-up), {} records; {} alerts read, {} distinct, replay {}; resume times {:?}, slowest {slowest:?}",
        records.len(),
        alerts.len(),
        ids.len(),
        expected.len(),
        resumes
    );
    let lost: Vec<&String> = expected.difference(&ids).collect();
    let new: Vec<&String> = ids.difference(&expected).collect();
    if !(lost.is_empty() && new.is_empty()) {
        // Kept for the post-mortem: the replay's outputs, the run log and
        // the live alerts, side by side.
        let live: String = alerts
            .iter()
            .map(|alert| format!("{}\n", serde_json::to_string(alert).expect("an alert serialises")))
            .collect();
        std::fs::write(dir.path().join("live-alerts.jsonl"), live).expect("write the live alerts");
        eprintln!("{test}: outputs kept in {}", dir.keep().display());
    }
    assert!(
        lost.is_empty() && new.is_empty(),
        "the alerts topic must hold exactly the replay's alert ids: lost {lost:?}, under a new id {new:?}"
    );
    assert!(
        slowest <= RESUME_BOUND,
        "every restart resumes within {RESUME_BOUND:?}: {resumes:?}"
    );
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log_text.contains("AKIAKWTEST"), "no raw key id in the run log");
}

/// A tansu broker of this test's own, in memory, on `port`.
struct Tansu {
    child: Child,
}

impl Tansu {
    /// The tansu binary: on the PATH or in `~/.cargo/bin`.
    fn binary() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("tansu"))
                .find(|path| path.is_file())
        });
        on_path.or_else(|| {
            let home = std::env::var_os("HOME")?;
            let path = PathBuf::from(home).join(".cargo/bin/tansu");
            path.is_file().then_some(path)
        })
    }

    async fn start(binary: &Path, port: u16, log: &Path) -> Tansu {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the broker log");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("tansu starts");
        let mut tansu = Tansu { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = tansu.child.try_wait() {
                panic!("tansu exited ({status}); its log ends:\n{}", tail(log));
            }
            assert!(Instant::now() < deadline, "tansu did not answer on {port} within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tansu
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes every topic of `config` as `.ci/start-tansu.sh` does for the
/// example config: three partitions each, the changelog compacted, and the
/// candidates and control topics with one partition.
async fn create_all_topics(brokers: &str, config: &Config) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let kafka = kafka_of(config);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let topics = topics_of(config);
    let single = single_partition_topics_of(config);
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| (name, PARTITIONS))
        .chain(single.iter().map(|name| (name, 1)))
        .map(|(name, partitions)| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
            if *name == kafka.changelog_topic {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let results = admin
        .create_topics(
            &new_topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create topics");
    for result in results {
        result.expect("topic created");
    }
}

/// What this proves: an outage of the broker does not make keywatch exit,
/// and when a broker answers again on the same address keywatch is still
/// running and stops, cleanly or by its stop timeout. The tansu built here keeps its data in memory,
/// so the broker that comes back is empty: whether keywatch resumes on a
/// broker that kept its data is not shown here (see docs/OPERATIONS.md).
/// Such a broker answers fetches for the topics it lost with a zero topic
/// id, which made the unpatched librdkafka 2.12.1 die with SIGSEGV (about
/// one run in three; see `vendor/rdkafka-sys/PATCHED.md`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_run_leaves_keywatch_running_through_the_outage_and_the_return_and_it_stops_within_its_stop_timeout()
 {
    let test = "a_broker_killed_mid_run_leaves_keywatch_running_through_the_outage_and_the_return_and_it_stops_within_its_stop_timeout";
    // The test runs its own broker, but only where the broker tests run.
    if real_brokers(test).is_none() {
        return;
    }
    let binary = Tansu::binary().unwrap_or_else(|| {
        panic!("{test}: KEYWATCH_TEST_BROKERS is set but no tansu binary is on the PATH or in ~/.cargo/bin")
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let broker_log = dir.path().join("tansu.log");
    let mut tansu = Tansu::start(&binary, port, &broker_log).await;
    let mut config = fault_config(&brokers, &unique_prefix("kw-brokerdown"), dir.path());
    kafka_of_mut(&mut config).stop_timeout = Duration::from_secs(5);
    let kafka = kafka_of(&config).clone();
    let input = kafka.input_topics[0].clone();
    create_topics(&brokers, &[(input.as_str(), PARTITIONS)]).await;

    let first = travel_scenario(6, 10, 0);
    produce_unbatched(&brokers, &input, &first, Placement::KeyedByKeyId).await;
    let log = dir.path().join("run.log");
    let mut run = RunProcess::spawn(dir.path(), &config, &log);
    run.wait_first_progress(Duration::from_secs(90)).await;
    let ends = end_offsets(&brokers, &input);
    run.wait_caught_up("keyed", &input, &ends, CATCH_UP).await;

    // The broker goes away for a while; keywatch must wait for it.
    tansu.kill();
    let outage = Duration::from_secs(15);
    let down_since = Instant::now();
    while down_since.elapsed() < outage {
        run.assert_running("while the broker was down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broker answers again; keywatch keeps running beside it.
    let mut tansu = Tansu::start(&binary, port, &broker_log).await;
    create_all_topics(&brokers, &config).await;
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(10) {
        run.assert_running("after the broker came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The broker that came back is empty: a write of the last batch may
    // never be confirmed, and then `stop_timeout` (5 s here) ends the wait
    // with its own status and an error naming it, never a hang.
    let status = run.terminate(Duration::from_secs(30));
    let stalled = status.code() == Some(keywatch::pipeline::STOP_TIMED_OUT_EXIT)
        && std::fs::read_to_string(&log).is_ok_and(|text| text.contains("the stop did not finish within stop_timeout"));
    assert!(
        status.success() || stalled,
        "a clean stop, or the stop timeout's exit, after the outage: {status}\n{}",
        tail(&log)
    );
    tansu.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_manifest_falls_back_loudly_for_its_partition_and_never_crash_loops() {
    let test = "a_corrupt_checkpoint_manifest_falls_back_loudly_for_its_partition_and_never_crash_loops";
    let Some(brokers) = real_brokers(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = fault_config(&brokers, &unique_prefix("kw-corrupt"), dir.path());
    let kafka = kafka_of(&config).clone();
    let input = kafka.input_topics[0].clone();
    create_topics(&brokers, &[(input.as_str(), PARTITIONS)]).await;

    let records = travel_scenario(12, 10, 0);
    let half = first_trip(&records);
    produce_unbatched(&brokers, &input, &records[..half], Placement::KeyedByKeyId).await;
    let log = dir.path().join("run.log");
    let mut run = RunProcess::spawn(dir.path(), &config, &log);
    let ends = end_offsets(&brokers, &input);
    run.wait_caught_up("keyed", &input, &ends, CATCH_UP).await;
    let status = run.terminate(Duration::from_secs(30));
    assert!(status.success(), "a clean stop writes the checkpoints: {status}");

    // Garbage over the manifest of the busiest partition.
    let (&corrupt_partition, _) = ends.iter().max_by_key(|(_, end)| **end).expect("partitions");
    let id = PartitionId::new(input.clone(), corrupt_partition);
    let changelog_partitions = partition_count(&brokers, &kafka.changelog_topic);
    let producer = producer(&brokers, true);
    let key = id.changelog_key();
    producer
        .send(
            FutureRecord::to(&kafka.changelog_topic)
                .key(key.as_str())
                .payload(&b"\x00\xffnot a manifest{{"[..])
                .partition(id.changelog_partition(changelog_partitions)),
            Duration::from_secs(10),
        )
        .await
        .expect("the garbage manifest is written");

    produce_unbatched(&brokers, &input, &records[half..], Placement::KeyedByKeyId).await;
    let ends = end_offsets(&brokers, &input);
    let mut run = RunProcess::spawn(dir.path(), &config, &log);
    run.wait_caught_up("keyed", &input, &ends, CATCH_UP).await;
    // Still up a little later: no crash loop after the catch-up either.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.assert_running("after restoring past a corrupt checkpoint");
    let status = run.terminate(Duration::from_secs(30));
    assert!(status.success(), "a clean stop: {status}");

    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let loud: Vec<&str> = log_text
        .lines()
        .filter(|line| (line.contains("WARN") || line.contains("ERROR")) && line.contains(&id.to_string()))
        .filter(|line| line.contains("checkpoint"))
        .collect();
    eprintln!("{test}: the fallback as logged: {loud:#?}");
    assert!(
        !loud.is_empty(),
        "the fallback of {id} is logged at warn or error naming the partition and the checkpoint; the log ends:\n{}",
        tail(&log)
    );
    assert!(!log_text.contains("AKIAKWTEST"), "no raw key id in the run log");
}

/// A producer that may write records up to 2 MB, so that the test can put
/// a record just under the broker's 1 MiB limit on the input topic.
fn big_record_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "2000000")
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .expect("big record producer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_producer_limit_and_an_alert_with_huge_evidence_do_not_stop_the_group_and_the_dead_letter_is_truncated()
 {
    let test = "a_record_over_the_producer_limit_and_an_alert_with_huge_evidence_do_not_stop_the_group_and_the_dead_letter_is_truncated";
    let Some(brokers) = real_brokers(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = fault_config(&brokers, &unique_prefix("kw-oversize"), dir.path());
    let kafka = kafka_of(&config).clone();
    let input = kafka.input_topics[0].clone();
    create_topics(&brokers, &[(input.as_str(), PARTITIONS)]).await;

    // Four days of one key from London (enough to know its endpoints),
    // then: junk just under 1 MiB, a first call to a sensitive endpoint
    // whose name is 600 kB (refused, from Sydney: a high alert whose
    // summary, subject and evidence each embed the name), and ordinary
    // calls after both, which must still be processed.
    let key = "AKIAKWHUGE0000000001";
    let mut payloads: Vec<String> = Vec::new();
    for day in 0..4 {
        for call in 0..40 {
            let ts = T0_MS + day * DAY_MS + 9 * HOUR_MS + call * 12 * 60_000;
            payloads.push(canonical(ts, key, &ip("london", 10), "/v1/orders", 200));
        }
    }
    let junk_size = 1_040_000;
    let junk = format!("{{\"junk\":\"{}", "x".repeat(junk_size - 10));
    assert!((1_000_000..1_048_576).contains(&junk.len()));
    let huge_endpoint = format!("/v1/admin/{}export", "abcd/".repeat(120_000));
    let twist = T0_MS + 4 * DAY_MS + 9 * HOUR_MS;
    let huge_event = canonical(twist, key, &ip("sydney", 20), &huge_endpoint, 403);
    assert!(
        huge_event.len() < 1 << 20,
        "the event itself is within the record limit"
    );
    let junk_index = payloads.len();
    payloads.push(junk.clone());
    payloads.push(huge_event);
    for call in 0..20 {
        let ts = twist + HOUR_MS + call * 60_000;
        payloads.push(canonical(ts, key, &ip("london", 10), "/v1/orders", 200));
    }

    let producer = big_record_producer(&brokers);
    let mut junk_position = None;
    for (index, payload) in payloads.iter().enumerate() {
        let delivery = producer
            .send(
                FutureRecord::to(&input).key(key).payload(payload.as_str()),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(error, _)| panic!("record {index} of {} bytes: {error}", payload.len()));
        if index == junk_index {
            junk_position = Some((delivery.partition, delivery.offset));
        }
    }
    let (junk_partition, junk_offset) = junk_position.expect("the junk landed");

    let log = dir.path().join("run.log");
    let mut run = RunProcess::spawn(dir.path(), &config, &log);
    let ends = end_offsets(&brokers, &input);
    run.wait_caught_up("keyed", &input, &ends, CATCH_UP).await;
    run.assert_running("after the oversized record and alert");
    let status = run.terminate(Duration::from_secs(30));
    assert!(status.success(), "a clean stop: {status}\n{}", tail(&log));

    let letters: Vec<ReadMessage> = read_topic(&brokers, &kafka.dead_letter_topic)
        .into_iter()
        .filter(|letter| {
            letter.headers.get("source_partition") == Some(&junk_partition.to_string())
                && letter.headers.get("source_offset") == Some(&junk_offset.to_string())
        })
        .collect();
    assert_eq!(letters.len(), 1, "the junk is dead-lettered once");
    let letter = &letters[0];
    assert!(
        letter.payload.len() < junk.len() && letter.payload.len() < 1_000_000,
        "the dead letter is truncated: {} bytes of {}",
        letter.payload.len(),
        junk.len()
    );
    assert!(
        junk.as_bytes().starts_with(&letter.payload),
        "the dead letter holds the start of the original"
    );
    assert!(
        letter.headers.values().any(|value| *value == junk.len().to_string()),
        "a header gives the original size {}: {:?}",
        junk.len(),
        letter.headers
    );

    let sensitive: Vec<(usize, keywatch::alert::Alert)> = read_topic(&brokers, &kafka.alerts_topic)
        .into_iter()
        .map(|message| {
            let size = message.payload.len();
            (size, serde_json::from_slice(&message.payload).expect("an alert"))
        })
        .filter(|(_, alert): &(usize, keywatch::alert::Alert)| alert.detector == Detector::SensitiveEndpoint)
        .collect();
    eprintln!(
        "{test}: dead letter {} of {} bytes; sensitive-endpoint alerts of {:?} bytes",
        letter.payload.len(),
        junk.len(),
        sensitive.iter().map(|(size, _)| *size).collect::<Vec<_>>()
    );
    assert!(
        !sensitive.is_empty(),
        "the huge sensitive endpoint is alerted, with capped evidence"
    );
    assert!(
        sensitive.iter().all(|(size, _)| *size < 1_000_000),
        "alerts fit the producer limit"
    );
}
