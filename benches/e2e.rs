//! End-to-end benchmarks, each beside a reference measured in the same run
//! on the same input, so that the ratio survives a loaded machine:
//!
//! - `replay`: `keywatch replay` (one thread) over canonical events that
//!   `keywatch generate` writes, against a bare serde_json parse of the same
//!   lines into borrowed fields;
//! - `kafka`: `keywatch run`'s pipeline (in-process, as the Kafka tests
//!   drive it) consuming a preloaded topic, against a bare rdkafka consumer
//!   that only reads and counts the same topic; on librdkafka's mock
//!   cluster, and on a real broker when `KEYWATCH_TEST_BROKERS` is set;
//! - `latency`: event-to-alert latency on the alerts topic while events are
//!   produced at a paced rate (`--rate`; in `all`, half the pipeline's
//!   measured maximum), on the mock cluster, and on the real broker of
//!   `KEYWATCH_TEST_BROKERS` when set (`--real-rate`, 2,000 events/s).
//!
//! `cargo bench --bench e2e -- all --quick` runs all three at sizes that
//! finish in a few minutes; without `--quick`, replay reads 10 million
//! events. Resident memory per key is `benches/state_memory.rs`.
//! Inputs go to a temporary folder that is deleted at the end.

/// The binary's allocator, so that what is measured is what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keywatch::checkpoint::PartitionId;
use keywatch::config::{Config, KafkaConfig};
use keywatch::enrich::GeoIp;
use keywatch::enrich::test_world;
use keywatch::generate::{DEFAULT_START, GenerateConfig, Generation};
use keywatch::model::Model;
use keywatch::pipeline::{Pipeline, Progress};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, FutureProducer, FutureRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Why a benchmark could not run to the end.
#[derive(Debug, thiserror::Error)]
enum BenchError {
    #[error("{0}")]
    Failed(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

fn failed(text: impl Into<String>) -> BenchError {
    BenchError::Failed(text.into())
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Sizes {
    /// Keys and days of the generated replay input (about 10 million events
    /// in full: 2.3 GB; 800 keys gave 13.6 million).
    replay_keys: usize,
    replay_days: u32,
    rounds: usize,
    /// Events preloaded on the Kafka input topic and its partitions: the
    /// mock cluster keeps only the last 5 MiB of each partition, so the
    /// events are spread thin enough that none is dropped (checked).
    kafka_events: usize,
    kafka_partitions: i32,
    /// Seconds of paced traffic in the latency run.
    latency_seconds: u64,
    /// `fetch.wait.max.ms` of the pipeline's consumers in the latency run;
    /// `None` keeps librdkafka's 500 ms. The mock cluster answers a fetch
    /// that finds no new record only when this much time has passed, even
    /// if records arrive meanwhile, where a broker's long poll answers as
    /// soon as one does: with the default, a record produced just after
    /// such a fetch waits up to 500 ms on the mock cluster alone.
    latency_fetch_wait_ms: Option<u64>,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                replay_keys: 200,
                replay_days: 5,
                rounds: 2,
                kafka_events: 120_000,
                kafka_partitions: 12,
                latency_seconds: 20,
                latency_fetch_wait_ms: Some(10),
            }
        } else {
            Sizes {
                replay_keys: 600,
                replay_days: 10,
                rounds: 2,
                kafka_events: 600_000,
                kafka_partitions: 48,
                latency_seconds: 60,
                latency_fetch_wait_ms: Some(10),
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|arg| arg == "--quick");
    let value_of = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|index| args.get(index + 1))
            .cloned()
    };
    // `cargo test --all-targets` runs this without `--bench`: a smoke run of
    // the replay pair on a small input, so the suite checks the harness
    // works without spending minutes on it.
    let smoke = !args.iter().any(|arg| arg == "--bench");
    if smoke {
        let sizes = Sizes {
            replay_keys: 60,
            replay_days: 5,
            rounds: 1,
            kafka_events: 0,
            kafka_partitions: 1,
            latency_seconds: 0,
            latency_fetch_wait_ms: None,
        };
        println!("e2e smoke run (as a test): replay only, 60 keys, 5 days");
        if let Err(error) = replay_bench(&sizes) {
            eprintln!("e2e smoke run failed: {error}");
            std::process::exit(1);
        }
        return;
    }
    let mut sizes = Sizes::new(quick);
    if let Some(events) = value_of("--kafka-events").and_then(|text| text.parse().ok()) {
        sizes.kafka_events = events;
    }
    if let Some(partitions) = value_of("--partitions").and_then(|text| text.parse().ok()) {
        sizes.kafka_partitions = partitions;
    }
    if let Some(wait) = value_of("--fetch-wait-ms").and_then(|text| text.parse::<u64>().ok()) {
        // 0 keeps librdkafka's default.
        sizes.latency_fetch_wait_ms = (wait > 0).then_some(wait);
    }
    let rate: Option<f64> = value_of("--rate").and_then(|text| text.parse().ok());
    let real_rate: Option<f64> = value_of("--real-rate").and_then(|text| text.parse().ok());
    // `cargo bench` passes `--bench`; the first other word picks the run.
    let command = args
        .iter()
        .find(|arg| matches!(arg.as_str(), "replay" | "kafka" | "latency" | "all"))
        .cloned()
        .unwrap_or_else(|| "all".to_string());
    println!(
        "e2e {command} ({}) on {} cores",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let result = match command.as_str() {
        "replay" => replay_bench(&sizes),
        "kafka" => kafka_bench(&sizes).map(|_| ()),
        "latency" => latency_bench(&sizes, rate, real_rate),
        _ => replay_bench(&sizes)
            .and_then(|()| kafka_bench(&sizes))
            .and_then(|pipeline_rate| latency_bench(&sizes, rate.or(pipeline_rate.map(|rate| rate / 2.0)), real_rate)),
    };
    if let Err(error) = result {
        eprintln!("e2e {command} failed: {error}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- replay --

/// The reference: the fields of a canonical line, borrowed from the line
/// where they need no unescaping, as the cheapest serde_json parse does.
#[derive(Deserialize)]
struct BareEvent<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    key_id: Cow<'a, str>,
    #[serde(borrow)]
    ip: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    endpoint: Cow<'a, str>,
    status: u16,
    #[serde(borrow, default)]
    user_agent: Option<Cow<'a, str>>,
    #[serde(default)]
    bytes_out: Option<u64>,
}

/// Reads `path` line by line and parses each line into [`BareEvent`];
/// returns the lines parsed and the seconds it took.
fn bare_parse(path: &Path) -> Result<(u64, f64), BenchError> {
    let started = Instant::now();
    let file = std::fs::File::open(path).map_err(io(path.display().to_string()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(1024);
    let mut lines = 0u64;
    let mut checksum = 0u64;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(io(path.display().to_string()))?;
        if read == 0 {
            break;
        }
        let event: BareEvent<'_> =
            serde_json::from_slice(&line).map_err(|error| failed(format!("line {lines}: {error}")))?;
        checksum = checksum.wrapping_add(
            event.status as u64
                + event.ts.len() as u64
                + event.key_id.len() as u64
                + event.ip.len() as u64
                + event.method.len() as u64
                + event.endpoint.len() as u64
                + event.user_agent.map_or(0, |agent| agent.len() as u64)
                + event.bytes_out.unwrap_or(0),
        );
        lines += 1;
    }
    black_box(checksum);
    Ok((lines, started.elapsed().as_secs_f64()))
}

fn keywatch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_keywatch")
}

fn run_keywatch(args: &[&str], what: &str) -> Result<String, BenchError> {
    let output = Command::new(keywatch_bin())
        .args(args)
        .output()
        .map_err(io(format!("running keywatch {what}")))?;
    if !output.status.success() {
        return Err(failed(format!(
            "keywatch {what} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn replay_bench(sizes: &Sizes) -> Result<(), BenchError> {
    let scratch = tempfile::Builder::new()
        .prefix("keywatch-e2e-replay-")
        .tempdir()
        .map_err(io("making a scratch folder"))?;
    let input = scratch.path().join("input");
    let input_text = input.display().to_string();
    let started = Instant::now();
    run_keywatch(
        &[
            "generate",
            "--keys",
            &sizes.replay_keys.to_string(),
            "--days",
            &sizes.replay_days.to_string(),
            "--seed",
            "1",
            "--out",
            &input_text,
        ],
        "generate",
    )?;
    let events = input.join("events.jsonl");
    let bytes = std::fs::metadata(&events).map_err(io("events.jsonl"))?.len();
    println!(
        "replay: generated {:.1} MB ({} keys, {} days) in {:.0} s",
        bytes as f64 / 1e6,
        sizes.replay_keys,
        sizes.replay_days,
        started.elapsed().as_secs_f64()
    );
    // Replay uses every core by default where it can: the one-core figure
    // is the one to set beside a one-core parse.
    let help = run_keywatch(&["replay", "--help"], "replay --help")?;
    let threaded = help.contains("--threads");
    let events_text = events.display().to_string();
    let city = input.join("geoip-city.mmdb").display().to_string();
    let asn = input.join("geoip-asn.mmdb").display().to_string();
    let out = scratch.path().join("out").display().to_string();
    let mut ratios = Vec::new();
    for round in 1..=sizes.rounds {
        let (lines, parse_seconds) = bare_parse(&events)?;
        let mut thread_options: Vec<Vec<&str>> = vec![if threaded { vec!["--threads", "1"] } else { vec![] }];
        if threaded {
            thread_options.push(vec![]);
        }
        for threads in thread_options {
            let _ = std::fs::remove_dir_all(&out);
            let mut args = vec![
                "replay",
                "--input",
                &events_text,
                "--geoip-city",
                &city,
                "--geoip-asn",
                &asn,
                "--out",
                &out,
                "--no-progress",
            ];
            args.extend(threads.iter().copied());
            let started = Instant::now();
            run_keywatch(&args, "replay")?;
            let replay_seconds = started.elapsed().as_secs_f64();
            let label = if threads.is_empty() && threaded {
                "all cores"
            } else {
                "one thread"
            };
            println!(
                "replay round {round} ({label}): {lines} events; bare serde_json parse {:.3} M lines/s ({parse_seconds:.1} s), keywatch replay {:.3} M events/s ({replay_seconds:.1} s): replay takes {:.2}x the parse's time",
                lines as f64 / parse_seconds / 1e6,
                lines as f64 / replay_seconds / 1e6,
                replay_seconds / parse_seconds
            );
            if label == "one thread" {
                ratios.push(replay_seconds / parse_seconds);
            }
        }
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "replay: one-thread replay / bare parse time, upper median of {} rounds: {:.2}x",
        ratios.len(),
        ratios[ratios.len() / 2]
    );
    Ok(())
}

// ----------------------------------------------------------------- kafka --

/// Where the Kafka benchmarks run.
enum Brokers {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Real(String),
}

impl Brokers {
    fn bootstrap(&self) -> String {
        match self {
            Brokers::Mock(cluster) => cluster.bootstrap_servers(),
            Brokers::Real(brokers) => brokers.clone(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Brokers::Mock(_) => "mock cluster",
            Brokers::Real(_) => "real broker",
        }
    }

    /// The pipeline's output topics of `config`, on the mock cluster; a
    /// real broker's are made by the pipeline itself.
    async fn create_output_topics(&self, config: &Config, partitions: i32) -> Result<(), BenchError> {
        match self {
            Brokers::Mock(_) => self.create_topics(&output_topics(config, partitions)).await,
            Brokers::Real(_) => Ok(()),
        }
    }

    async fn create_topics(&self, topics: &[(String, i32)]) -> Result<(), BenchError> {
        match self {
            Brokers::Mock(cluster) => {
                for (topic, partitions) in topics {
                    cluster.create_topic(topic, *partitions, 1)?;
                }
                Ok(())
            }
            Brokers::Real(brokers) => {
                use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
                let admin: AdminClient<rdkafka::client::DefaultClientContext> =
                    ClientConfig::new().set("bootstrap.servers", brokers).create()?;
                let new_topics: Vec<NewTopic<'_>> = topics
                    .iter()
                    .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
                    .collect();
                let results = admin
                    .create_topics(
                        &new_topics,
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
                    )
                    .await?;
                for result in results {
                    result.map_err(|(topic, code)| failed(format!("creating {topic}: {code}")))?;
                }
                Ok(())
            }
        }
    }
}

/// A pipeline configuration with the production defaults for batches and
/// checkpoints, its topics named after `prefix`.
fn pipeline_config(brokers: &str, input: &str, prefix: &str) -> Config {
    let mut kafka = KafkaConfig::new(brokers, vec![input.to_string()]);
    kafka.group_id = format!("{prefix}-group");
    kafka.input_keyed_by_key_id = true;
    kafka.repartition_topic = format!("{prefix}-repartition");
    kafka.alerts_topic = format!("{prefix}-alerts");
    kafka.revocations_topic = format!("{prefix}-revocations");
    kafka.digests_topic = format!("{prefix}-digests");
    kafka.dead_letter_topic = format!("{prefix}-dlq");
    kafka.changelog_topic = format!("{prefix}-changelog");
    kafka.source_topic = format!("{prefix}-by-source");
    kafka.revocations_shadow_topic = format!("{prefix}-revocations-shadow");
    kafka.revocation_candidates_topic = format!("{prefix}-revocation-candidates");
    kafka.control_topic = format!("{prefix}-control");
    kafka.revocation_acks_topic = format!("{prefix}-revocation-acks");
    kafka.topic_replication_factor = 1;
    Config {
        kafka: Some(kafka),
        ..Config::default()
    }
}

/// The output topics of a configuration, with their partition counts, for
/// the mock cluster (a real broker's are made by the pipeline).
fn output_topics(config: &Config, partitions: i32) -> Vec<(String, i32)> {
    let Some(kafka) = config.kafka.as_ref() else {
        return Vec::new();
    };
    let mut topics: Vec<(String, i32)> = [
        &kafka.alerts_topic,
        &kafka.revocations_topic,
        &kafka.digests_topic,
        &kafka.dead_letter_topic,
        &kafka.changelog_topic,
        &kafka.repartition_topic,
        &kafka.source_topic,
        &kafka.revocations_shadow_topic,
        &kafka.revocation_acks_topic,
    ]
    .into_iter()
    .map(|topic| (topic.clone(), partitions))
    .collect();
    topics.push((kafka.revocation_candidates_topic.clone(), 1));
    topics.push((kafka.control_topic.clone(), 1));
    topics
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Most payload bytes preloaded on one partition: the mock cluster keeps
/// only the last 5 MiB of each.
const PARTITION_BUDGET: usize = 4 << 20;

/// An input record placed on its partition by a hash of its key id, as a
/// producer keyed by key id places it.
struct Placed {
    key: String,
    partition: i32,
    payload: Vec<u8>,
}

/// The partition of a key id among `partitions`, as a producer keyed by key
/// id places it.
fn partition_of(key: &str, partitions: i32) -> i32 {
    use std::hash::BuildHasher;
    (rustc_hash::FxBuildHasher.hash_one(key) % partitions as u64) as i32
}

/// The same records placed on `partitions` partitions by the same hash: a
/// key's records stay on one partition, in order.
fn placed_on(records: &[Placed], partitions: i32) -> Vec<Placed> {
    records
        .iter()
        .map(|placed| Placed {
            key: placed.key.clone(),
            partition: partition_of(&placed.key, partitions),
            payload: placed.payload.clone(),
        })
        .collect()
}

/// Up to `count` events of a generated run in time order, as canonical JSON
/// on `partitions` partitions, each partition within [`PARTITION_BUDGET`]
/// (a key's later events are left out once its partition is full: a few
/// keys make most of the traffic), and the run's GeoIP databases.
fn generated_records(count: usize, partitions: i32) -> Result<(Vec<Placed>, GeoIp), BenchError> {
    let config = GenerateConfig::new(2_000, 10, 1, DEFAULT_START).map_err(|error| failed(error.to_string()))?;
    let generation = Generation::new(config);
    let mut filled = vec![0usize; partitions as usize];
    let mut records = Vec::with_capacity(count);
    let _ = generation.for_each_event(|event| {
        if records.len() == count {
            return Err(());
        }
        let payload = serde_json::to_vec(event).map_err(|_| ())?;
        let partition = partition_of(event.key_id.as_ref(), partitions) as usize;
        if filled[partition] + payload.len() <= PARTITION_BUDGET {
            filled[partition] += payload.len();
            records.push(Placed {
                key: event.key_id.to_string(),
                partition: partition as i32,
                payload,
            });
        }
        Ok(())
    });
    let city = generation.city_database().map_err(|error| failed(error.to_string()))?;
    let asn = generation.asn_database().map_err(|error| failed(error.to_string()))?;
    let geo = GeoIp::from_bytes(Some(city), Some(asn)).map_err(|error| failed(error.to_string()))?;
    Ok((records, geo))
}

/// Produces `records`, keyed by key id, each on its partition. On a real
/// broker, one record per batch, in order (one request in flight): after
/// multi-record batches, tansu (0.6, memory storage) reports a high
/// watermark short of what it stores (111,628 to 116,714 of 120,000 with
/// 1 MB batches, 119,016 with 100 kB ones; a consumer still reads them
/// all), and both runs read to the watermarks; one record a batch, the
/// watermarks are exact.
async fn preload(brokers: &Brokers, topic: &str, records: &[Placed]) -> Result<(), BenchError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers.bootstrap())
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000");
    if matches!(brokers, Brokers::Real(_)) {
        config
            .set("batch.num.messages", "1")
            .set("max.in.flight.requests.per.connection", "1");
    }
    let producer: FutureProducer = config.create()?;
    let mut deliveries = Vec::with_capacity(records.len());
    for placed in records {
        let mut record = FutureRecord::to(topic)
            .key(placed.key.as_str())
            .partition(placed.partition)
            .payload(placed.payload.as_slice());
        let delivery = loop {
            match producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((_, returned)) => {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        deliveries.push(delivery);
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(error.into()),
            Err(_) => return Err(failed("a delivery was cancelled")),
        }
    }
    Ok(())
}

/// Low and high watermarks of every partition of `topic`.
fn watermarks(brokers: &str, topic: &str, partitions: i32) -> Result<BTreeMap<i32, (i64, i64)>, BenchError> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let mut marks = BTreeMap::new();
    for partition in 0..partitions {
        marks.insert(
            partition,
            consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?,
        );
    }
    Ok(marks)
}

/// What one consumer run measured.
struct ConsumeRun {
    records: u64,
    /// Records per second from the moment a tenth of the records had been
    /// read to the last one: the steady rate, without the start-up (a group
    /// join for the pipeline, an assignment for the bare consumer).
    steady_rate: f64,
    /// From start to the last record.
    total_seconds: f64,
}

/// The reference: a consumer that reads every record of `topic` from the
/// beginning and counts it (and its bytes), nothing else.
fn bare_consume(brokers: &str, topic: &str, ends: &BTreeMap<i32, i64>) -> Result<ConsumeRun, BenchError> {
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("bare"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        // As the pipeline's consumers do: with librdkafka's 1 s default, a
        // consumer whose local queue filled up fetched nothing for a second.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in ends.keys() {
        assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let total: u64 = ends.values().map(|end| *end as u64).sum();
    let tenth = total / 10;
    let mut counted = 0u64;
    let mut bytes = 0u64;
    let mut per_partition: BTreeMap<i32, i64> = BTreeMap::new();
    let mut at_tenth = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while counted < total {
        if Instant::now() > deadline {
            return Err(failed(format!("the bare consumer read only {counted} of {total}")));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                counted += 1;
                bytes += message.payload().map_or(0, |payload| payload.len() as u64);
                let next = per_partition.entry(message.partition()).or_default();
                *next = (*next).max(message.offset() + 1);
                if counted == tenth {
                    at_tenth = Some(Instant::now());
                }
            }
            Some(Err(error)) => return Err(error.into()),
            None => {}
        }
    }
    let total_seconds = started.elapsed().as_secs_f64();
    black_box(bytes);
    let expected: BTreeMap<i32, i64> = ends
        .iter()
        .filter(|(_, end)| **end > 0)
        .map(|(partition, end)| (*partition, *end))
        .collect();
    if per_partition != expected {
        return Err(failed("the bare consumer did not read every partition to its end"));
    }
    let steady = at_tenth.map_or(total_seconds, |at| at.elapsed().as_secs_f64());
    Ok(ConsumeRun {
        records: counted,
        steady_rate: (total - tenth) as f64 / steady.max(1e-9),
        total_seconds,
    })
}

fn committed_all(progress: &Progress, topic: &str, ends: &BTreeMap<i32, i64>) -> bool {
    ends.iter().all(|(partition, end)| {
        *end == 0 || progress.committed_offset("keyed", &PartitionId::new(topic, *partition)) == Some(*end)
    })
}

/// The subject: `keywatch run`'s pipeline with its own group and output
/// topics, from the first record of `topic` until it has committed every
/// partition to its end (offsets are committed only after the outputs they
/// cover are delivered).
async fn pipeline_consume(
    brokers: &Brokers,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    geo: &Arc<GeoIp>,
) -> Result<ConsumeRun, BenchError> {
    let prefix = unique("kw-bench");
    let config = pipeline_config(&brokers.bootstrap(), topic, &prefix);
    brokers.create_output_topics(&config, ends.len() as i32).await?;
    let started = Instant::now();
    let pipeline = Pipeline::new(config, Arc::new(Model::default_model()), Arc::clone(geo))
        .map_err(|error| failed(error.to_string()))?;
    let progress = pipeline.progress();
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(pipeline.run(cancel.clone()));
    let total: u64 = ends.values().map(|end| *end as u64).sum();
    let tenth = total / 10;
    let mut at_tenth = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if handle.is_finished() {
            break;
        }
        if at_tenth.is_none() && progress.counts().records >= tenth {
            at_tenth = Some(Instant::now());
        }
        if committed_all(&progress, topic, ends) {
            break;
        }
        if Instant::now() > deadline {
            return Err(failed(format!(
                "the pipeline did not catch up: {:?}",
                progress.snapshot().committed
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let total_seconds = started.elapsed().as_secs_f64();
    let steady = at_tenth.map_or(total_seconds, |at| at.elapsed().as_secs_f64());
    cancel.cancel();
    let summary = handle
        .await
        .map_err(|error| failed(error.to_string()))?
        .map_err(|error| failed(format!("pipeline: {error}")))?;
    if summary.counts.records != total {
        return Err(failed(format!(
            "the pipeline read {} records of {total}",
            summary.counts.records
        )));
    }
    println!(
        "  pipeline: {} events, {} alerts, {} batches, {} checkpoints",
        summary.counts.events, summary.counts.alerts, summary.batches, summary.checkpoints
    );
    Ok(ConsumeRun {
        records: summary.counts.records,
        steady_rate: (total - tenth) as f64 / steady.max(1e-9),
        total_seconds,
    })
}

/// Runs the pair on `brokers`; returns the pipeline's best steady rate.
async fn kafka_pair(
    brokers: &Brokers,
    records: &[Placed],
    partitions: i32,
    rounds: usize,
    geo: &Arc<GeoIp>,
) -> Result<f64, BenchError> {
    if let Some(placed) = records.iter().find(|placed| placed.partition >= partitions) {
        return Err(failed(format!(
            "a record is placed on partition {} of a {partitions}-partition topic",
            placed.partition
        )));
    }
    let topic = unique("kw-bench-access");
    brokers.create_topics(&[(topic.clone(), partitions)]).await?;
    let bootstrap = brokers.bootstrap();
    let started = Instant::now();
    preload(brokers, &topic, records).await?;
    let marks = watermarks(&bootstrap, &topic, partitions)?;
    let ends: BTreeMap<i32, i64> = marks.iter().map(|(partition, (_, high))| (*partition, *high)).collect();
    let stored: i64 = marks.values().map(|(low, high)| high - low).sum();
    if marks.values().any(|(low, _)| *low != 0) || stored != records.len() as i64 {
        return Err(failed(format!(
            "the {} kept {stored} of {} records (watermarks {marks:?}): use more partitions",
            brokers.name(),
            records.len()
        )));
    }
    let bytes: usize = records.iter().map(|placed| placed.payload.len()).sum();
    println!(
        "kafka ({}): preloaded {} events ({:.1} MB, {} partitions, all retained) in {:.1} s",
        brokers.name(),
        records.len(),
        bytes as f64 / 1e6,
        partitions,
        started.elapsed().as_secs_f64()
    );
    let mut best_pipeline: f64 = 0.0;
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let bare_topic = topic.clone();
        let bare_brokers = bootstrap.clone();
        let bare_ends = ends.clone();
        let bare = tokio::task::spawn_blocking(move || bare_consume(&bare_brokers, &bare_topic, &bare_ends))
            .await
            .map_err(|error| failed(error.to_string()))??;
        let pipeline = pipeline_consume(brokers, &topic, &ends, geo).await?;
        let ratio = pipeline.steady_rate / bare.steady_rate;
        println!(
            "kafka ({}) round {round}: bare consumer {} records at {:.0}/s ({:.1} s in all); keywatch run {} records at {:.0}/s ({:.1} s in all, with group join and topic checks): {:.0}% of the bare consumer",
            brokers.name(),
            bare.records,
            bare.steady_rate,
            bare.total_seconds,
            pipeline.records,
            pipeline.steady_rate,
            pipeline.total_seconds,
            ratio * 100.0
        );
        best_pipeline = best_pipeline.max(pipeline.steady_rate);
        ratios.push(ratio);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "kafka ({}): keywatch run / bare consumer, lower median of {} rounds: {:.0}% (target 70%)",
        brokers.name(),
        ratios.len(),
        ratios[(ratios.len() - 1) / 2] * 100.0
    );
    Ok(best_pipeline)
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("starting the async runtime"))
}

/// Returns the pipeline's best steady rate on the mock cluster.
fn kafka_bench(sizes: &Sizes) -> Result<Option<f64>, BenchError> {
    let (records, geo) = generated_records(sizes.kafka_events, sizes.kafka_partitions)?;
    let geo = Arc::new(geo);
    let runtime = runtime()?;
    runtime.block_on(async {
        let mock = Brokers::Mock(MockCluster::new(1)?);
        let rate = kafka_pair(&mock, &records, sizes.kafka_partitions, sizes.rounds, &geo).await?;
        if let Ok(brokers) = std::env::var("KEYWATCH_TEST_BROKERS")
            && !brokers.trim().is_empty()
        {
            // A real broker stores everything; fewer partitions, as a
            // deployment of this size would have.
            // The records are placed again for that count: a record sent
            // to a partition the topic does not have is held by the
            // producer until its delivery times out.
            let real = Brokers::Real(brokers);
            let partitions = 6;
            kafka_pair(&real, &placed_on(&records, partitions), partitions, sizes.rounds, &geo).await?;
        } else {
            println!("kafka: KEYWATCH_TEST_BROKERS is not set: no real-broker run");
        }
        Ok(Some(rate))
    })
}

// --------------------------------------------------------------- latency --

const LATENCY_PARTITIONS: i32 = 6;
const LATENCY_KEYS: usize = 3_000;
const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or_default()
}

fn latency_key(index: usize) -> String {
    format!("AKIALATENCY{index:09}")
}

fn canonical(ts_ms: i64, key: &str, ip: &str, endpoint: &str) -> Vec<u8> {
    let ts = keywatch::event::format_ts(ts_ms);
    format!(
        r#"{{"ts":"{ts}","key_id":"{key}","ip":"{ip}","method":"GET","endpoint":"{endpoint}","status":200,"user_agent":"billing-service/4.2","bytes_out":512}}"#
    )
    .into_bytes()
}

fn place(name: &str, host: u32) -> Result<String, BenchError> {
    test_world::host(name, host)
        .map(|address| address.to_string())
        .ok_or_else(|| failed(format!("no place {name} in the test world")))
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Detectors a first call from the other side of the world raises.
const TRAVEL_DETECTORS: &[&str] = &[
    "new_country",
    "impossible_travel",
    "new_region",
    "new_asn",
    "unfamiliar_network",
];

/// Event-to-alert latency: three days of history for every key
/// (preloaded, time-stamped up to now), then live traffic stamped with the
/// wall clock at `rate` events/s, among which, evenly spread, every key
/// makes its first call from the other side of the world. Latency runs from handing that
/// event to the producer to reading its first travel alert from the alerts
/// topic.
/// On the mock cluster at `rate` (10,000 events/s by default), then on the
/// real broker of `KEYWATCH_TEST_BROKERS`, if set, at `real_rate` (2,000 by
/// default: tansu on this machine takes one-record batches at about 7,000
/// records/s).
fn latency_bench(sizes: &Sizes, rate: Option<f64>, real_rate: Option<f64>) -> Result<(), BenchError> {
    latency_on(Brokers::Mock(MockCluster::new(1)?), sizes, rate.unwrap_or(10_000.0))?;
    match std::env::var("KEYWATCH_TEST_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => {
            latency_on(Brokers::Real(brokers), sizes, real_rate.unwrap_or(2_000.0))
        }
        _ => {
            println!("latency: KEYWATCH_TEST_BROKERS is not set: no real-broker run");
            Ok(())
        }
    }
}

fn latency_on(brokers: Brokers, sizes: &Sizes, rate: f64) -> Result<(), BenchError> {
    let rate = rate.max(100.0);
    let runtime = runtime()?;
    let bootstrap = brokers.bootstrap();
    let on = brokers.name();
    let input = unique("kw-latency-access");
    let mut config = pipeline_config(&bootstrap, &input, &unique("kw-latency"));
    if let (Some(wait), Some(kafka)) = (sizes.latency_fetch_wait_ms, config.kafka.as_mut()) {
        kafka.properties.insert("fetch.wait.max.ms".into(), wait.to_string());
    }
    let fetch_wait = sizes
        .latency_fetch_wait_ms
        .map_or_else(|| "librdkafka's default".to_string(), |wait| format!("{wait} ms"));
    let alerts_topic = config
        .kafka
        .as_ref()
        .map(|kafka| kafka.alerts_topic.clone())
        .unwrap_or_default();
    let london = place("london", 10)?;
    let sydney = place("sydney", 20)?;
    let keys: Vec<String> = (0..LATENCY_KEYS).map(latency_key).collect();
    // The events of the live phase are judged as soon as the partition's
    // clock reaches them: the default model waits `max_out_of_order` (5
    // minutes of event time) for stragglers before judging, which in live
    // traffic is 5 minutes of wall time by design.
    let mut model = Model::default_model();
    model.time.max_out_of_order = Duration::ZERO;
    let model = Arc::new(model);
    runtime.block_on(async {
        brokers.create_topics(&[(input.clone(), LATENCY_PARTITIONS)]).await?;
        brokers.create_output_topics(&config, LATENCY_PARTITIONS).await?;
        // History: 8 calls a day from London for three days, ending a
        // minute ago, in time order across keys.
        let end = now_ms() - 60_000;
        let start = end - 3 * DAY_MS;
        let mut history = Vec::new();
        for call in 0..24i64 {
            for (index, key) in keys.iter().enumerate() {
                let ts = start + call * (3 * DAY_MS / 24) + index as i64;
                let endpoint = if call % 2 == 0 { "/v1/orders" } else { "/v1/invoices" };
                history.push(Placed {
                    key: key.clone(),
                    partition: (index % LATENCY_PARTITIONS as usize) as i32,
                    payload: canonical(ts, key, &london, endpoint),
                });
            }
        }
        preload(&brokers, &input, &history).await?;
        let pipeline = Pipeline::new(config.clone(), Arc::clone(&model), Arc::new(test_world::geoip()))
            .map_err(|error| failed(error.to_string()))?;
        let progress = pipeline.progress();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(pipeline.run(cancel.clone()));
        let marks = watermarks(&bootstrap, &input, LATENCY_PARTITIONS)?;
        let history_ends: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
        let deadline = Instant::now() + Duration::from_secs(300);
        while !committed_all(&progress, &input, &history_ends) {
            if Instant::now() > deadline || handle.is_finished() {
                return Err(failed("the pipeline did not catch up with the history"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "latency ({on}): {} history events read; live traffic at {rate:.0} events/s for {} s; pipeline fetch.wait.max.ms {fetch_wait}",
            history.len(),
            sizes.latency_seconds
        );

        // The alert reader: a thread polling the alerts topic, noting when
        // each key's first alert arrives.
        let stop = Arc::new(AtomicBool::new(false));
        let reader_brokers = bootstrap.clone();
        let reader_topic = alerts_topic.clone();
        let reader_stop = Arc::clone(&stop);
        type Arrivals = (HashMap<String, Instant>, Vec<f64>, Vec<f64>);
        let reader = std::thread::spawn(move || -> Result<Arrivals, BenchError> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &reader_brokers)
                .set("group.id", unique("alert-reader"))
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "10")
                .create()?;
            let mut assignment = TopicPartitionList::new();
            for partition in 0..LATENCY_PARTITIONS {
                assignment.add_partition_offset(&reader_topic, partition, Offset::Beginning)?;
            }
            consumer.assign(&assignment)?;
            let mut arrived = HashMap::new();
            // From the alert's hand-over to the pipeline's producer (its
            // message timestamp) to its arrival here, per travel alert.
            let mut handed_to_read = Vec::new();
            // From the triggering event's time (the wall clock when it was
            // sent) to the alert's arrival.
            let mut stamped_to_read = Vec::new();
            while !reader_stop.load(Ordering::Relaxed) {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(5)) {
                    let at = Instant::now();
                    let alert = message
                        .payload()
                        .and_then(|payload| serde_json::from_slice::<serde_json::Value>(payload).ok());
                    // Only the travel's own finding counts: the live rate
                    // is far above the history's, so rate alerts may come
                    // first for a key, before its call from Sydney.
                    let travel = alert
                        .as_ref()
                        .and_then(|alert| alert.get("detector")?.as_str())
                        .is_some_and(|detector| TRAVEL_DETECTORS.contains(&detector));
                    let fingerprint = alert
                        .as_ref()
                        .and_then(|alert| alert.get("key_fingerprint")?.as_str().map(str::to_string));
                    if let (true, Some(fingerprint)) = (travel, fingerprint) {
                        arrived.entry(fingerprint).or_insert_with(|| {
                            if let Some(produced_ms) = message.timestamp().to_millis() {
                                handed_to_read.push((now_ms() - produced_ms) as f64);
                            }
                            let stamped = alert
                                .as_ref()
                                .and_then(|alert| keywatch::event::parse_ts(alert.get("ts")?.as_str()?));
                            if let Some(stamped_ms) = stamped {
                                stamped_to_read.push((now_ms() - stamped_ms) as f64);
                            }
                            at
                        });
                    }
                }
            }
            Ok((arrived, handed_to_read, stamped_to_read))
        });

        // The paced producer, on a thread of its own.
        let producer_brokers = bootstrap.clone();
        let producer_topic = input.clone();
        let seconds = sizes.latency_seconds;
        let producer_keys = keys.clone();
        let one_record_batches = matches!(brokers, Brokers::Real(_));
        let producer = std::thread::spawn(move || -> Result<(HashMap<String, Instant>, u64), BenchError> {
            // Lingering 5 ms, as a log shipper batches: librdkafka's mock
            // cluster answers a fetch with one message set per partition
            // (its Fetch handler writes one), so with producer batches of
            // one or two records, as 1 ms gives at 10,000 events/s, the
            // consumer falls behind the producer at any pace below some
            // 20,000 events/s, however idle the pipeline, and the latency
            // measured is the mock's. The linger is part of the latency.
            // On a real broker, one record a batch, as the preload sends:
            // tansu reports a high watermark short of what it stores after
            // multi-record batches, and the run waits for the pipeline to
            // commit exactly to it.
            let mut producer_config = ClientConfig::new();
            producer_config
                .set("bootstrap.servers", &producer_brokers)
                .set("linger.ms", "5");
            if one_record_batches {
                producer_config.set("batch.num.messages", "1");
            }
            let producer: ThreadedProducer<DefaultProducerContext> = producer_config.create()?;
            let mut sent_at = HashMap::new();
            let started = Instant::now();
            let total = (rate * seconds as f64) as u64;
            let mut traveller = 0usize;
            // Travellers spread evenly over the whole run.
            let every = (total / producer_keys.len() as u64).max(2);
            for sent in 0..total {
                let due = started + Duration::from_secs_f64(sent as f64 / rate);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let ts = now_ms();
                let (index, payload) = if sent % every == every / 2 && traveller < producer_keys.len() {
                    let index = traveller;
                    traveller += 1;
                    let key = &producer_keys[index];
                    sent_at.insert(keywatch::event::key_fingerprint(key), Instant::now());
                    (index, canonical(ts, key, &sydney, "/v1/orders"))
                } else {
                    // Keys that already travelled keep calling from Sydney.
                    let index = (sent as usize * 7919) % producer_keys.len();
                    let ip = if index < traveller { &sydney } else { &london };
                    (index, canonical(ts, &producer_keys[index], ip, "/v1/orders"))
                };
                let key = &producer_keys[index];
                let partition = (index % LATENCY_PARTITIONS as usize) as i32;
                let mut record = BaseRecord::to(&producer_topic)
                    .key(key.as_str())
                    .partition(partition)
                    .payload(payload.as_slice());
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((_, returned)) => {
                            record = returned;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
            }
            let achieved = total as f64 / started.elapsed().as_secs_f64();
            producer.flush(Duration::from_secs(30))?;
            println!("latency ({on}): produced {total} events at {achieved:.0}/s");
            Ok((sent_at, total))
        });
        let (sent_at, total) = producer.join().map_err(|_| failed("the producer thread panicked"))??;
        // Let the last alerts arrive, then check that every record was read.
        let marks = watermarks(&bootstrap, &input, LATENCY_PARTITIONS)?;
        let ends: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !committed_all(&progress, &input, &ends) {
            if Instant::now() > deadline || handle.is_finished() {
                return Err(failed("the pipeline did not catch up with the live traffic"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        let (arrived, mut handed_to_read, mut stamped_to_read) =
            reader.join().map_err(|_| failed("the reader thread panicked"))??;
        handed_to_read.sort_by(f64::total_cmp);
        stamped_to_read.sort_by(f64::total_cmp);
        cancel.cancel();
        let summary = handle
            .await
            .map_err(|error| failed(error.to_string()))?
            .map_err(|error| failed(format!("pipeline: {error}")))?;
        let expected = history.len() as u64 + total;
        if summary.counts.records != expected {
            return Err(failed(format!(
                "the pipeline read {} records of {expected}",
                summary.counts.records
            )));
        }
        let mut latencies: Vec<f64> = sent_at
            .iter()
            .filter_map(|(fingerprint, sent)| {
                arrived
                    .get(fingerprint)
                    .map(|at| at.saturating_duration_since(*sent).as_secs_f64() * 1e3)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        let early = sent_at
            .iter()
            .filter(|(fingerprint, sent)| arrived.get(*fingerprint).is_some_and(|at| at < *sent))
            .count();
        if early > 0 {
            return Err(failed(format!(
                "{early} travel alerts arrived before their call was sent: they are not the travel's"
            )));
        }
        println!(
            "latency ({on}): {} of {} travelling keys alerted; event-to-alert p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms at {rate:.0} events/s (target p99 < 500 ms)",
            latencies.len(),
            sent_at.len(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN),
        );
        println!(
            "latency ({on}): of which from the alert's hand-over to the producer to its read: p50 {:.0} ms, p99 {:.0} ms",
            percentile(&handed_to_read, 0.50),
            percentile(&handed_to_read, 0.99),
        );
        println!(
            "latency ({on}): from the triggering event's time stamp to the alert's read: p50 {:.0} ms, p99 {:.0} ms",
            percentile(&stamped_to_read, 0.50),
            percentile(&stamped_to_read, 0.99),
        );
        if latencies.len() * 10 < sent_at.len() * 9 {
            return Err(failed("fewer than 90% of the travelling keys raised an alert"));
        }
        Ok(())
    })
}
