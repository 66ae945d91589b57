//! Operations against a real broker (`KEYWATCH_TEST_BROKERS`, tansu in CI):
//! how fast a restarted static member gets its partitions back, and that
//! records the decoder rejects (one too large for a whole dead letter, one
//! multi-event document with several bad elements) neither stop the group
//! nor go out more than once, while `/readyz` reports the restored
//! assignment. Without the variable each test says why and returns.

use std::time::{Duration, Instant};

use keywatch::config::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kafka_support::{
    Placement, RunningPipeline, ScenarioRecord, create_topics, end_offsets, init_logging, key_id, produce_unbatched,
    read_topic, real_brokers, test_config, travel_scenario, unique_prefix, wait_caught_up,
};

/// Polls `consumer` until it holds partitions; returns how long that took.
fn time_to_assignment(consumer: &BaseConsumer, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let _ = consumer.poll(Duration::from_millis(100));
        if consumer.assignment().map(|list| list.count() > 0).unwrap_or(false) {
            return Some(started.elapsed());
        }
    }
    None
}

fn static_member(kafka: &KafkaConfig, group: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = kafka.group_consumer_config(group).create().expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// KIP-345: a static member that restarts within the session timeout gets
/// its partitions back without waiting for the session to expire. Prints
/// the times, so a broker without static membership shows as a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_static_member_gets_its_partitions_back_within_seconds() {
    let Some(brokers) = real_brokers("a_restarted_static_member_gets_its_partitions_back_within_seconds") else {
        return;
    };
    init_logging();
    let prefix = unique_prefix("ops-static");
    let topic = format!("{prefix}-access");
    create_topics(&brokers, &[(topic.as_str(), 3)]).await;
    let mut kafka = KafkaConfig::new(brokers.clone(), vec![topic.clone()]);
    kafka.instance_id = Some("ops-static-0".into());
    kafka.session_timeout = Duration::from_secs(30);
    kafka.properties.insert("heartbeat.interval.ms".into(), "500".into());
    let group = format!("{prefix}-group");

    let first = static_member(&kafka, &group, &topic);
    let joined = time_to_assignment(&first, Duration::from_secs(60)).expect("first join");
    // A static member does not leave the group when it closes: to the
    // group this is a crash.
    drop(first);
    let restarted = static_member(&kafka, &group, &topic);
    let rejoined = time_to_assignment(&restarted, Duration::from_secs(45));
    eprintln!("static membership: first join {joined:?}, after a restart {rejoined:?} (session timeout 30s)");
    let rejoined = rejoined.expect("the restarted member got partitions back");
    assert!(
        rejoined < Duration::from_secs(10),
        "a restart took {rejoined:?}: the broker waited for the session timeout (no static membership)"
    );
    drop(restarted);
}

async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.0\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}

/// `/readyz` polled until it answers 200 or `timeout` passes; the last answer.
/// Every stage joins its own group, so the gate may be assigned a little
/// after the keyed stage has caught up.
async fn ready_within(address: std::net::SocketAddr, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = http_get(address, "/readyz").await;
        if answer.starts_with("HTTP/1.0 200") || Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("address")
}

/// A 300 KB malformed record and a CloudTrail document with three bad
/// elements among good ones: each is one dead letter, the large one cut to
/// `dead_letter_max_bytes` with its size in a header, and the group commits
/// past both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_are_one_bounded_dead_letter_each_and_never_stop_the_group() {
    let Some(brokers) = real_brokers("rejected_records_are_one_bounded_dead_letter_each_and_never_stop_the_group")
    else {
        return;
    };
    init_logging();
    let prefix = unique_prefix("ops-dlq");
    let mut config = test_config(&brokers, &prefix, true);
    let health = free_port();
    {
        let kafka = config.kafka.as_mut().expect("kafka section");
        kafka.dead_letter_max_bytes = 4096;
        kafka.health_listen = Some(health);
    }
    let input = format!("{prefix}-access");
    create_topics(&brokers, &[(input.as_str(), 1)]).await;

    let mut records = travel_scenario(2, 4, 0);
    let big = format!("{{\"ts\":\"{}\"", "x".repeat(300_000));
    let element = |ip: &str| {
        format!(
            r#"{{"eventTime":"2026-03-02T10:00:00Z","eventSource":"s3.amazonaws.com","eventName":"GetObject","sourceIPAddress":"{ip}","userIdentity":{{"accessKeyId":"{}"}}}}"#,
            key_id(0)
        )
    };
    let document = format!(
        "{{\"Records\":[{},{},{},{},{}]}}",
        element("192.0.2.1"),
        element("not-an-ip"),
        element("192.0.2.2"),
        element("also-bad"),
        element("999.0.0.1")
    );
    let position = records.len() / 2;
    for payload in [big.clone(), document] {
        records.insert(
            position,
            ScenarioRecord {
                key: Some(key_id(0)),
                payload,
                malformed: true,
            },
        );
    }
    produce_unbatched(&brokers, &input, &records, Placement::KeyedByKeyId).await;
    let ends = end_offsets(&brokers, &input);

    let running = RunningPipeline::start(&config);
    wait_caught_up(&[&running.progress], "keyed", &input, &ends, Duration::from_secs(120)).await;
    let ready = ready_within(health, Duration::from_secs(30)).await;
    assert!(
        ready.starts_with("HTTP/1.0 200"),
        "ready once every stage is assigned: {ready}"
    );
    assert!(http_get(health, "/healthz").await.starts_with("HTTP/1.0 200"));
    running.stop().await;

    let dead_letters = read_topic(&brokers, &format!("{prefix}-dlq"));
    assert_eq!(dead_letters.len(), 2, "one dead letter per rejected record");
    let cut = dead_letters
        .iter()
        .find(|message| message.headers.get("truncated").map(String::as_str) == Some("true"))
        .expect("the large record, cut");
    assert_eq!(cut.payload.len(), 4096);
    assert_eq!(cut.headers["original_size"], big.len().to_string());
    assert_eq!(cut.key, None, "never the input key");
    let document = dead_letters
        .iter()
        .find(|message| message.headers.contains_key("source_indexes"))
        .expect("the document, once");
    assert_eq!(document.headers["source_indexes"], "1,3,4");
    assert_eq!(document.headers["rejected_count"], "3");
    assert_eq!(document.headers["truncated"], "false");
}

/// `--log-format json` writes the start-up line as one JSON object with the
/// config summary, at the default filter, and never a password. Needs no
/// broker: the line comes before the first connection.
#[test]
fn the_start_up_line_is_json_with_a_summary_and_no_secret() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("kw.toml");
    std::fs::write(
        &config,
        "[fingerprint]\nunkeyed = true\n[kafka]\nbrokers = \"127.0.0.1:9\"\ninput_topics = [\"in\"]\ninstance_id = \"kw-7\"\n\
         [kafka.properties]\n\"sasl.password\" = \"hunter2-secret\"\n",
    )
    .expect("write config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env_remove("KEYWATCH_LOG")
        .env_remove("KEYWATCH_LOG_FORMAT")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start keywatch run");
    let stderr = child.stderr.take().expect("stderr");
    // Lines before it (a warning about the fingerprint mode) are JSON too.
    let mut before = Vec::new();
    let mut start_up = None;
    for line in std::io::BufReader::new(stderr).lines().take(20) {
        let line = line.expect("readable");
        let entry: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
        if entry["fields"]["message"] == "keywatch run starting" {
            start_up = Some((line, entry));
            break;
        }
        before.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(before.iter().all(|line| !line.contains("hunter2")), "{before:?}");
    let (line, entry) = start_up.expect("the start-up line among the first lines");
    assert_eq!(entry["level"], "INFO", "{line}");
    assert_eq!(entry["fields"]["message"], "keywatch run starting", "{line}");
    assert_eq!(entry["fields"]["instance"], "kw-7", "{line}");
    assert_eq!(entry["fields"]["static_member"], true, "{line}");
    assert!(
        entry["fields"]["model"]
            .as_str()
            .is_some_and(|model| model.contains('@')),
        "{line}"
    );
    assert!(line.contains("sasl.password"), "property names are listed: {line}");
    assert!(!line.contains("hunter2"), "no property value: {line}");
}

/// Counts the rebalances a consumer goes through.
#[derive(Default)]
struct CountingContext {
    rebalances: std::sync::atomic::AtomicUsize,
}

impl rdkafka::ClientContext for CountingContext {}

impl rdkafka::consumer::ConsumerContext for CountingContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        if matches!(rebalance, rdkafka::consumer::Rebalance::Revoke(_)) {
            self.rebalances.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// What KIP-345 promises beyond speed: the restart of one static member
/// does not make the others give up their partitions. Prints what the
/// broker did, so a broker without static membership shows as a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_one_static_member_leaves_the_others_alone() {
    let Some(brokers) = real_brokers("restarting_one_static_member_leaves_the_others_alone") else {
        return;
    };
    init_logging();
    let prefix = unique_prefix("ops-static-two");
    let topic = format!("{prefix}-access");
    create_topics(&brokers, &[(topic.as_str(), 4)]).await;
    let group = format!("{prefix}-group");
    let member = |id: &str| {
        let mut kafka = KafkaConfig::new(brokers.clone(), vec![topic.clone()]);
        kafka.instance_id = Some(id.into());
        kafka.properties.insert("heartbeat.interval.ms".into(), "500".into());
        kafka
    };
    let (kafka_a, kafka_b) = (member("ops-a"), member("ops-b"));
    let other: BaseConsumer<CountingContext> = kafka_b
        .group_consumer_config(&group)
        .create_with_context(CountingContext::default())
        .expect("consumer b");
    other.subscribe(&[topic.as_str()]).expect("subscribe");
    let first = static_member(&kafka_a, &group, &topic);
    // Both poll until each holds partitions and the group is stable.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let _ = first.poll(Duration::from_millis(50));
        let _ = other.poll(Duration::from_millis(50));
        let a = first.assignment().map(|l| l.count()).unwrap_or(0);
        let b = other.assignment().map(|l| l.count()).unwrap_or(0);
        if a > 0 && b > 0 && a + b == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the group never settled: a {a}, b {b}");
    }
    let settled = other.context().rebalances.load(std::sync::atomic::Ordering::SeqCst);
    drop(first);
    let restarted = static_member(&kafka_a, &group, &topic);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let _ = restarted.poll(Duration::from_millis(50));
        let _ = other.poll(Duration::from_millis(50));
    }
    let revocations = other.context().rebalances.load(std::sync::atomic::Ordering::SeqCst) - settled;
    let back = restarted.assignment().map(|l| l.count()).unwrap_or(0);
    eprintln!(
        "static membership: the other member had {revocations} revocations while one restarted; it holds {back} partitions again"
    );
    assert!(back > 0, "the restarted member holds partitions again");
    assert_eq!(revocations, 0, "a static member's restart rebalanced the group");
}
