//! What the Kafka tests share: where they run ([`Brokers`]: librdkafka's
//! mock cluster or a real broker), canonical events in the places of the
//! test world, a scenario every sane detector flags (a key used for days
//! from London, then minutes later from Sydney), producing and reading
//! topics, an in-process reference run of the engine, starting and stopping
//! a pipeline, and waiting for it to catch up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keywatch::alert::Alert;
use keywatch::alert::Output;
use keywatch::checkpoint::PartitionId;
use keywatch::config::{Config, KafkaConfig};
use keywatch::decode::{Decoder, Format};
use keywatch::engine::Engine;
use keywatch::enrich::GeoIp;
use keywatch::enrich::test_world;
use keywatch::model::Model;
use keywatch::pipeline::{Pipeline, PipelineError, Progress, RunSummary};
use keywatch::replay::kafka::{ReplayKafkaOptions, ReplayKafkaSummary, replay_from_kafka};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// 2026-03-02T00:00:00Z.
pub const T0_MS: i64 = 1_772_409_600_000;

/// Partitions of every topic a test makes.
pub const PARTITIONS: i32 = 3;

/// An address in a place of the test world, as text.
pub fn ip(place: &str, host: u8) -> String {
    test_world::host(place, u32::from(host))
        .expect("a place of the test world")
        .to_string()
}

/// GeoIP over the places of the test world.
pub fn geo() -> Arc<GeoIp> {
    Arc::new(test_world::geoip())
}

/// The default model with revocation requests sent (the default is shadow
/// mode) and caps too wide to hold any back: the scenarios check requests.
pub fn model() -> Arc<Model> {
    let mut model = Model::default_model();
    model.policy.mode = keywatch::revoke::Mode::Enforce;
    model.policy.max_requests.count = 10_000;
    model.policy.max_requests_per_owner.count = 10_000;
    Arc::new(model)
}

/// One canonical access event as JSON text.
pub fn canonical(ts_ms: i64, key: &str, ip: &str, endpoint: &str, status: u16) -> String {
    let ts = chrono::DateTime::from_timestamp_millis(ts_ms)
        .expect("valid time")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    serde_json::json!({
        "ts": ts,
        "key_id": key,
        "ip": ip,
        "method": "GET",
        "endpoint": endpoint,
        "status": status,
        "user_agent": "billing-service/4.2",
        "bytes_out": 512,
    })
    .to_string()
}

/// One input record of a scenario.
#[derive(Debug, Clone)]
pub struct ScenarioRecord {
    /// The key whose events these are (`None` for junk that has none).
    pub key: Option<String>,
    pub payload: String,
    /// Whether the decoder must reject it (dead letter).
    pub malformed: bool,
}

/// A 20-character key id.
pub fn key_id(index: usize) -> String {
    format!("AKIAKWTEST{index:010}")
}

/// `keys` keys, each used from London for three days; the keys with an odd
/// index are then used from Sydney minutes after their last London call.
/// Events of a key are in time order; keys are interleaved. Every
/// `malformed_every` records one malformed record is inserted.
pub fn travel_scenario(keys: usize, events_per_day: i64, malformed_every: usize) -> Vec<ScenarioRecord> {
    let mut by_time: Vec<(i64, usize, String)> = Vec::new();
    for index in 0..keys {
        let key = key_id(index);
        let offset = index as i64 * 61_000;
        for day in 0..3 {
            for call in 0..events_per_day {
                let ts = T0_MS + day * DAY_MS + 9 * HOUR_MS + call * (8 * HOUR_MS / events_per_day) + offset;
                let endpoint = if call % 2 == 0 { "/v1/orders" } else { "/v1/invoices" };
                by_time.push((ts, index, canonical(ts, &key, &ip("london", 10), endpoint, 200)));
            }
        }
        if index % 2 == 1 {
            let twist = T0_MS + 2 * DAY_MS + 17 * HOUR_MS + 20 * 60_000 + offset;
            for call in 0..3 {
                let ts = twist + call * 30_000;
                by_time.push((ts, index, canonical(ts, &key, &ip("sydney", 20), "/v1/orders", 200)));
            }
        }
        // A last call half an hour later moves every partition's event time
        // past the reorder bound, so the twists are judged live too.
        let closing = T0_MS + 2 * DAY_MS + 17 * HOUR_MS + 50 * 60_000 + offset;
        let place = if index % 2 == 1 { "sydney" } else { "london" };
        by_time.push((
            closing,
            index,
            canonical(closing, &key, &ip(place, 20), "/v1/orders", 200),
        ));
    }
    by_time.sort_by_key(|(ts, index, _)| (*ts, *index));
    let junk = [
        "{not json at all".to_string(),
        r#"{"ts":"2026-03-02T10:00:00Z","key_id":"AKIAKWJUNK0000000001","ip":"999.1.1.1","method":"GET","endpoint":"/x","status":200}"#.to_string(),
        r#"{"ts":"2026-03-02T10:00:00Z","key_id":"AKIAKWJUNK0000000002","method":"GET","endpoint":"/x","status":200}"#.to_string(),
    ];
    let mut records = Vec::with_capacity(by_time.len() + by_time.len() / malformed_every.max(1) + 1);
    for (position, (_, index, payload)) in by_time.into_iter().enumerate() {
        if malformed_every > 0 && position % malformed_every == malformed_every / 2 {
            let junk_payload = junk[(position / malformed_every) % junk.len()].clone();
            // Junk rides with a key, so it lands among that key's events.
            records.push(ScenarioRecord {
                key: Some(key_id(index)),
                payload: junk_payload,
                malformed: true,
            });
        }
        records.push(ScenarioRecord {
            key: Some(key_id(index)),
            payload,
            malformed: false,
        });
    }
    records
}

/// Where a produced record landed.
#[derive(Debug, Clone)]
pub struct Landed {
    pub record: ScenarioRecord,
    pub partition: i32,
    pub offset: i64,
}

/// How records are placed on the input topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Message key = raw key id (the producer's partitioner spreads keys).
    KeyedByKeyId,
    /// No message key; each key's records go to `key index % partitions`,
    /// so keys are mixed within partitions but each key stays in order.
    Unkeyed { partitions: i32 },
}

pub fn producer(brokers: &str, one_per_batch: bool) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    if one_per_batch {
        config.set("batch.num.messages", "1").set("linger.ms", "0");
    }
    config.create().expect("test producer")
}

/// Produces records in order and returns where each landed.
pub async fn produce(brokers: &str, topic: &str, records: &[ScenarioRecord], placement: Placement) -> Vec<Landed> {
    produce_with(brokers, topic, records, placement, false).await
}

/// As [`produce`], one record per record batch: tansu delivers nothing to a
/// fetch that starts inside a batch, so a test that resumes at a checkpoint
/// needs every offset to start a batch there.
pub async fn produce_unbatched(
    brokers: &str,
    topic: &str,
    records: &[ScenarioRecord],
    placement: Placement,
) -> Vec<Landed> {
    produce_with(brokers, topic, records, placement, true).await
}

async fn produce_with(
    brokers: &str,
    topic: &str,
    records: &[ScenarioRecord],
    placement: Placement,
    one_per_batch: bool,
) -> Vec<Landed> {
    let producer = producer(brokers, one_per_batch);
    let mut futures = Vec::with_capacity(records.len());
    for record in records {
        let mut message: FutureRecord<'_, str, str> = FutureRecord::to(topic).payload(record.payload.as_str());
        match placement {
            Placement::KeyedByKeyId => {
                if let Some(key) = &record.key {
                    message = message.key(key.as_str());
                }
            }
            Placement::Unkeyed { partitions } => {
                let index: i32 = record
                    .key
                    .as_deref()
                    .and_then(|key| key.trim_start_matches("AKIAKWTEST").parse().ok())
                    .unwrap_or(0);
                message = message.partition(index % partitions);
            }
        }
        let future = loop {
            match producer.send_result(message) {
                Ok(future) => break future,
                Err((_, returned)) => {
                    message = returned;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        futures.push(future);
    }
    let mut landed = Vec::with_capacity(records.len());
    for (record, future) in records.iter().zip(futures) {
        let delivery = future.await.expect("not cancelled").expect("delivered");
        landed.push(Landed {
            record: record.clone(),
            partition: delivery.partition,
            offset: delivery.offset,
        });
    }
    landed
}

/// One message read back.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

fn reader(brokers: &str, read_committed: bool) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "keywatch-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .expect("test consumer")
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> i32 {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0].partitions().len() as i32
}

/// The next offset after the last committed record of every partition,
/// found by reading the topic: some brokers (tansu) answer watermark
/// queries per record batch.
pub fn end_offsets(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer = reader(brokers, true);
    let mut ends: BTreeMap<i32, i64> = (0..partitions_of(&consumer, topic)).map(|p| (p, 0)).collect();
    for message in read_topic(brokers, topic) {
        let end = ends.entry(message.partition).or_default();
        *end = (*end).max(message.offset + 1);
    }
    ends
}

/// Every committed message of a topic, in offset order per partition, read
/// until librdkafka reports the end of every partition.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<ReadMessage> {
    let consumer = reader(brokers, true);
    let partitions = partitions_of(&consumer, topic);
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut pending: BTreeSet<i32> = (0..partitions).collect();
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|header| {
                                let value = header.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (header.key.to_string(), value.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                messages.push(ReadMessage {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(|key| String::from_utf8_lossy(key).into_owned()),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                pending.remove(&partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    assert!(pending.is_empty(), "could not read {topic} to its end");
    messages
}

/// Alerts read from a topic, checked to be keyed by their fingerprint.
pub fn read_alerts(brokers: &str, topic: &str) -> Vec<Alert> {
    read_topic(brokers, topic)
        .into_iter()
        .map(|message| {
            let alert: Alert = serde_json::from_slice(&message.payload).expect("an alert");
            assert_eq!(
                message.key.as_deref(),
                Some(alert.key_fingerprint.as_str()),
                "keyed by fingerprint"
            );
            alert
        })
        .collect()
}

/// What an uninterrupted run gives: the engine over each partition's valid
/// records in offset order, one engine per partition. Alert ids by key.
pub fn reference_alert_ids(landed: &[Landed], by_key: bool) -> BTreeSet<String> {
    let decoder = Decoder::new(Format::Canonical, None, 1 << 20);
    let mut groups: BTreeMap<String, Vec<&Landed>> = BTreeMap::new();
    for record in landed.iter().filter(|record| !record.record.malformed) {
        let group = if by_key {
            record.record.key.clone().unwrap_or_default()
        } else {
            record.partition.to_string()
        };
        groups.entry(group).or_default().push(record);
    }
    let mut ids = BTreeSet::new();
    for (_, mut records) in groups {
        records.sort_by_key(|record| (record.partition, record.offset));
        let mut engine = Engine::new(model(), geo());
        let events: Vec<_> = records
            .iter()
            .flat_map(|record| decoder.decode_to_vec(record.record.payload.as_bytes()))
            .map(|result| result.expect("valid record"))
            .collect();
        let mut outputs = Vec::new();
        engine.process(&events, &mut outputs);
        for output in outputs {
            if let Output::Alert(alert) = output {
                ids.insert(alert.id);
            }
        }
    }
    ids
}

/// A configuration for tests: small batches, frequent checkpoints.
pub fn test_config(brokers: &str, prefix: &str, keyed: bool) -> Config {
    let mut kafka = KafkaConfig::new(brokers, vec![format!("{prefix}-access")]);
    kafka.group_id = format!("{prefix}-group");
    kafka.input_keyed_by_key_id = keyed;
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
    kafka.batch_max_events = 100;
    kafka.batch_max_wait = Duration::from_millis(50);
    kafka.checkpoint_interval = Duration::from_millis(200);
    kafka.restore_timeout = Duration::from_secs(30);
    kafka.topic_replication_factor = 1;
    kafka.properties.insert("session.timeout.ms".into(), "6000".into());
    kafka.properties.insert("heartbeat.interval.ms".into(), "500".into());
    let mut config = Config {
        kafka: Some(kafka),
        ..Config::default()
    };
    // Test keys are not secrets: `run` needs unkeyed fingerprints chosen.
    config.fingerprint.unkeyed = true;
    config
}

/// The topics a test configuration names.
pub fn topics_of(config: &Config) -> Vec<String> {
    let kafka = config.kafka.as_ref().expect("kafka section");
    let mut topics = kafka.input_topics.clone();
    topics.extend([
        kafka.alerts_topic.clone(),
        kafka.revocations_topic.clone(),
        kafka.digests_topic.clone(),
        kafka.dead_letter_topic.clone(),
        kafka.changelog_topic.clone(),
        kafka.repartition_topic.clone(),
        kafka.source_topic.clone(),
        kafka.revocations_shadow_topic.clone(),
        kafka.revocation_acks_topic.clone(),
    ]);
    topics
}

/// The topics of a test configuration that have one partition.
pub fn single_partition_topics_of(config: &Config) -> Vec<String> {
    let kafka = config.kafka.as_ref().expect("kafka section");
    vec![kafka.revocation_candidates_topic.clone(), kafka.control_topic.clone()]
}

/// Waits until `done` holds, polling; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The furthest committed offset of a partition over several instances.
pub fn committed_anywhere(progresses: &[&Progress], stage: &str, topic: &str, partition: i32) -> Option<i64> {
    progresses
        .iter()
        .filter_map(|progress| progress.committed_offset(stage, &PartitionId::new(topic, partition)))
        .max()
}

/// Logs to the test output when `KEYWATCH_LOG` is set (e.g. `keywatch=debug`).
pub fn init_logging() {
    if let Ok(filter) = std::env::var("KEYWATCH_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Waits until the instances together have committed every partition of
/// `topic` up to `ends`; on timeout says which partitions lag.
pub async fn wait_caught_up(
    progresses: &[&Progress],
    stage: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let lagging: Vec<(i32, Option<i64>, i64)> = ends
            .iter()
            .filter(|(_, end)| **end > 0)
            .map(|(partition, end)| {
                (
                    *partition,
                    committed_anywhere(progresses, stage, topic, *partition),
                    *end,
                )
            })
            .filter(|(_, committed, end)| *committed != Some(*end))
            .collect();
        if lagging.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stage} stage did not catch up on {topic}: (partition, committed, end) {lagging:?}; progress {:?}",
            progresses
                .iter()
                .map(|progress| progress.snapshot())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The brokers of a real Kafka-compatible cluster for integration tests,
/// from `KEYWATCH_TEST_BROKERS`; `None` (after saying why) when unset.
pub fn real_brokers(test: &str) -> Option<String> {
    match std::env::var("KEYWATCH_TEST_BROKERS") {
        Ok(brokers) if !brokers.trim().is_empty() => {
            require_reachable(test, &brokers);
            Some(brokers)
        }
        _ => {
            eprintln!("skipping {test}: KEYWATCH_TEST_BROKERS is not set (bash .ci/start-tansu.sh starts a broker)");
            None
        }
    }
}

/// Panics unless every address of `brokers` accepts a TCP connection within
/// a few seconds: once `KEYWATCH_TEST_BROKERS` is set (as `.ci/run` does), a
/// broker that cannot be reached fails the test with a clear message instead
/// of a later timeout, and never turns into a skip.
pub fn require_reachable(test: &str, brokers: &str) {
    use std::net::ToSocketAddrs;
    for broker in brokers.split(',').map(str::trim).filter(|broker| !broker.is_empty()) {
        let address = broker.trim_start_matches("PLAINTEXT://").trim_start_matches("tcp://");
        let addresses: Vec<std::net::SocketAddr> = address
            .to_socket_addrs()
            .unwrap_or_else(|error| {
                panic!("{test}: KEYWATCH_TEST_BROKERS names `{broker}`, which does not resolve: {error}")
            })
            .collect();
        let reachable = addresses
            .iter()
            .any(|address| std::net::TcpStream::connect_timeout(address, Duration::from_secs(5)).is_ok());
        assert!(
            reachable,
            "{test}: KEYWATCH_TEST_BROKERS is set but nothing answers at `{broker}` (is the broker of .ci/run up?)"
        );
    }
}

/// How many partitions `topic` has, from the broker's metadata.
pub fn partition_count(brokers: &str, topic: &str) -> i32 {
    partitions_of(&reader(brokers, false), topic)
}

/// A topic prefix no earlier run on the same broker used.
pub fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("{name}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Creates topics through the admin API and waits until metadata shows them.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
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
    let consumer = reader(brokers, false);
    for (name, partitions) in topics {
        wait_until(&format!("topic {name} in metadata"), Duration::from_secs(30), || {
            consumer
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .map(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .any(|topic| topic.name() == *name && topic.partitions().len() == *partitions as usize)
                })
                .unwrap_or(false)
        })
        .await;
    }
}

/// A local port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// The body of `GET /metrics`, or `None` while nothing answers.
pub fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Index of the first record of the first trip to Sydney: records before it
/// are history only, so a part produced after it needs that history.
pub fn first_trip(records: &[ScenarioRecord]) -> usize {
    let sydney = ip("sydney", 20);
    records
        .iter()
        .position(|record| record.payload.contains(&sydney))
        .expect("the scenario travels")
}

/// The Kafka section of a test configuration.
pub fn kafka_of(config: &Config) -> &KafkaConfig {
    config.kafka.as_ref().expect("kafka section")
}

/// The Kafka section of a test configuration, to change it.
pub fn kafka_of_mut(config: &mut Config) -> &mut KafkaConfig {
    config.kafka.as_mut().expect("kafka section")
}

/// Where a broker scenario runs.
pub enum Brokers {
    /// librdkafka's in-process mock cluster, one per test; a test's topics
    /// are made up front.
    Mock(MockCluster<'static, DefaultProducerContext>),
    /// A real Kafka-compatible broker (tansu in CI) at these addresses:
    /// topic names are unique per run, the test makes the input topic and
    /// the pipeline makes the others through the admin API, as in production.
    Real(String),
}

impl Brokers {
    pub fn mock() -> Brokers {
        Brokers::Mock(MockCluster::new(1).expect("mock cluster"))
    }

    /// The broker named by `KEYWATCH_TEST_BROKERS`; `None`, after saying
    /// why `test` skips, when it is unset.
    pub fn real(test: &str) -> Option<Brokers> {
        real_brokers(test).map(Brokers::Real)
    }

    pub fn bootstrap_servers(&self) -> String {
        match self {
            Brokers::Mock(cluster) => cluster.bootstrap_servers(),
            Brokers::Real(brokers) => brokers.clone(),
        }
    }

    /// How long a stage may take to catch up; a real broker answers slower.
    pub fn catch_up(&self) -> Duration {
        match self {
            Brokers::Mock(_) => Duration::from_secs(90),
            Brokers::Real(_) => Duration::from_secs(120),
        }
    }

    /// A test configuration called `name` on these brokers (see
    /// [`test_config`]) with its input topic in place; returns it and the
    /// input topic's name.
    pub async fn prepare(&self, name: &str, keyed: bool) -> (Config, String) {
        let config = match self {
            Brokers::Mock(cluster) => {
                let config = test_config(&cluster.bootstrap_servers(), name, keyed);
                for topic in topics_of(&config) {
                    cluster.create_topic(&topic, PARTITIONS, 1).expect("topic");
                }
                for topic in single_partition_topics_of(&config) {
                    cluster.create_topic(&topic, 1, 1).expect("topic");
                }
                config
            }
            Brokers::Real(brokers) => {
                let config = test_config(brokers, &unique_prefix(&format!("kw-{name}")), keyed);
                create_topics(brokers, &[(kafka_of(&config).input_topics[0].as_str(), PARTITIONS)]).await;
                config
            }
        };
        let input = kafka_of(&config).input_topics[0].clone();
        (config, input)
    }

    /// Produces records so that a consumer can resume at any of their
    /// offsets: tansu returns nothing to a fetch that starts inside a record
    /// batch, so on a real broker each record is a batch of its own.
    pub async fn produce_resumable(
        &self,
        topic: &str,
        records: &[ScenarioRecord],
        placement: Placement,
    ) -> Vec<Landed> {
        match self {
            Brokers::Mock(cluster) => produce(&cluster.bootstrap_servers(), topic, records, placement).await,
            Brokers::Real(brokers) => produce_unbatched(brokers, topic, records, placement).await,
        }
    }
}

/// A pipeline running on the test's runtime.
pub struct RunningPipeline {
    pub progress: Arc<Progress>,
    pub cancel: CancellationToken,
    pub handle: JoinHandle<Result<RunSummary, PipelineError>>,
}

impl RunningPipeline {
    /// Starts `keywatch run` with `config` over the test world.
    pub fn start(config: &Config) -> RunningPipeline {
        RunningPipeline::start_with_model(config, model())
    }

    /// Starts `keywatch run` with `config` and `model` over the test world.
    pub fn start_with_model(config: &Config, model: Arc<Model>) -> RunningPipeline {
        let pipeline = Pipeline::new(config.clone(), model, geo()).expect("pipeline");
        let progress = pipeline.progress();
        let cancel = CancellationToken::new();
        let handle = tokio::spawn(pipeline.run(cancel.clone()));
        RunningPipeline {
            progress,
            cancel,
            handle,
        }
    }

    /// Shuts down cleanly and returns the run's summary.
    pub async fn stop(self) -> RunSummary {
        self.cancel.cancel();
        self.handle.await.expect("task").expect("clean shutdown")
    }

    /// Stops without a clean shutdown: no final batch, no final checkpoint,
    /// no final commit, as a crash would.
    pub async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    /// Waits, polling often, until it has processed at least `records`.
    pub async fn wait_for_records(&self, records: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.progress.snapshot().counts.records < records {
            assert!(Instant::now() < deadline, "the pipeline made no progress");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Runs `keywatch replay --from-kafka` over the test world, on a blocking
/// thread (it drives its own consumer), and expects it to succeed; `what`
/// names the replay in the failure message.
pub async fn replay_kafka(config: &Config, options: ReplayKafkaOptions, what: &str) -> ReplayKafkaSummary {
    let config = config.clone();
    tokio::task::spawn_blocking(move || replay_from_kafka(&config, model(), geo(), &options))
        .await
        .expect("the replay thread")
        .unwrap_or_else(|error| panic!("{what}: {error}"))
}
