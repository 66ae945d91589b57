//! The demo's run: the mock cluster and its topics, the pipeline on a
//! runtime of its own, a producer thread streaming generated traffic into
//! the input topic, a watcher thread reading the output topics back, and
//! the files written at the end.
//!
//! The mock cluster keeps only the last 5 MiB or 100,000 message sets of a
//! partition and drops older data silently, so the producer never runs more
//! than [`MAX_LEAD`] records ahead of what the pipeline has committed, and
//! the demo checks at the end that every produced record was processed.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::display::{Display, Status};
use super::{DemoArgs, DemoError, DemoReport, Seen};
use crate::alert::{Alert, RevocationRequest};
use crate::config::Config;
use crate::enrich::GeoIp;
use crate::eval::{ScoreOptions, score};
use crate::generate::{EventCounts, GenerateConfig, Generation};
use crate::model::Model;
use crate::pipeline::{Pipeline, Progress};
use crate::sink::file::JsonlWriter;
use crate::sink::kafka::send_when_queue_has_room;

/// Most records the producer may be ahead of the pipeline's committed
/// offsets: far below what the mock cluster keeps per partition.
pub const MAX_LEAD: u64 = 8_000;
/// One malformed record is produced every this many events, to show the
/// dead-letter topic at work.
const MALFORMED_EVERY: u64 = 25_000;
/// Start of the generated traffic.
const DEMO_START: &str = "2026-01-05T00:00:00Z";
const INPUT_TOPIC: &str = "api-access-logs";
const PARTITIONS: i32 = 4;

/// Shared between the producer, the watcher and the display.
#[derive(Default)]
struct Live {
    produced: AtomicU64,
    event_ts: AtomicI64,
    producer_done: AtomicBool,
    stop_watcher: AtomicBool,
}

/// What the watcher read back from the output topics.
#[derive(Default)]
struct Collected {
    alerts: Vec<Alert>,
    revocations: Vec<RevocationRequest>,
    dead_letters: Vec<serde_json::Value>,
}

/// Runs the whole demo; returns what happened. Files go to `args.out`.
pub fn run_demo(args: &DemoArgs) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let out = args.out.clone();
    std::fs::create_dir_all(&out).map_err(|source| DemoError::Io {
        path: out.clone(),
        source,
    })?;
    let generation = Arc::new(Generation::new(GenerateConfig::new(
        args.keys, args.days, args.seed, DEMO_START,
    )?));
    let (city, asn) = generation.write_geoip_databases(&out)?;
    let geo = Arc::new(GeoIp::from_bytes(Some(city), Some(asn)).map_err(|err| DemoError::Incomplete(err.to_string()))?);
    let model = Arc::new(Model::default_model());
    generation.write_labels(&out)?;
    let run_start_ms = generation.config().start_ms;
    let run_end_ms = generation.config().end_ms();

    let cluster = MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    let config = demo_config(&brokers);
    let kafka = config
        .kafka
        .clone()
        .ok_or_else(|| DemoError::Incomplete("demo config has no kafka".into()))?;
    for topic in [
        INPUT_TOPIC,
        &kafka.alerts_topic,
        &kafka.revocations_topic,
        &kafka.digests_topic,
        &kafka.source_topic,
        &kafka.dead_letter_topic,
        &kafka.changelog_topic,
        &kafka.revocations_shadow_topic,
        &kafka.revocation_acks_topic,
    ] {
        cluster.create_topic(topic, PARTITIONS, 1)?;
    }
    // The revocation gate judges all keys on one partition.
    for topic in [&kafka.revocation_candidates_topic, &kafka.control_topic] {
        cluster.create_topic(topic, 1, 1)?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| DemoError::Io {
            path: PathBuf::from("tokio runtime"),
            source,
        })?;
    let pipeline = Pipeline::new(config.clone(), Arc::clone(&model), geo)?;
    let progress = pipeline.progress();
    let cancel = CancellationToken::new();
    let pipeline_task = runtime.spawn(pipeline.run(cancel.clone()));

    let live = Arc::new(Live::default());
    let (seen_sender, seen) = mpsc::channel();
    let watcher = {
        let live = Arc::clone(&live);
        let topics = vec![
            kafka.alerts_topic.clone(),
            kafka.revocations_topic.clone(),
            kafka.dead_letter_topic.clone(),
        ];
        let brokers = brokers.clone();
        std::thread::spawn(move || watch(&brokers, &topics, &live, &seen_sender))
    };
    let producer = {
        let live = Arc::clone(&live);
        let progress = Arc::clone(&progress);
        let brokers = brokers.clone();
        let speed = args.speed.max(1.0);
        let generation = Arc::clone(&generation);
        std::thread::spawn(move || produce(&generation, &brokers, speed, run_start_ms, &live, &progress))
    };

    let mut display = Display::new(!args.plain && std::io::stdout().is_terminal(), run_start_ms, run_end_ms);
    let mut collected = Collected::default();
    let mut last_tick = Instant::now();
    loop {
        while let Ok(item) = seen.try_recv() {
            display.seen(&item);
            collected.add(item);
        }
        if last_tick.elapsed() >= Duration::from_millis(250) {
            display.tick(&status(&live, &progress, &collected));
            last_tick = Instant::now();
        }
        if live.producer_done.load(Ordering::Acquire) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let produced_summary = producer
        .join()
        .map_err(|_| DemoError::Incomplete("the producer thread panicked".into()))??;

    // Wait until the pipeline has committed every produced record.
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed_total(&progress) < produced_summary.produced {
        if Instant::now() > deadline {
            return Err(DemoError::Incomplete(format!(
                "the pipeline committed {} of {} records in time",
                committed_total(&progress),
                produced_summary.produced
            )));
        }
        while let Ok(item) = seen.try_recv() {
            display.seen(&item);
            collected.add(item);
        }
        display.tick(&status(&live, &progress, &collected));
        std::thread::sleep(Duration::from_millis(50));
    }
    cancel.cancel();
    let summary = runtime
        .block_on(pipeline_task)
        .map_err(|err| DemoError::Incomplete(format!("the pipeline task failed: {err}")))??;

    // Read the output topics to their ends.
    let expected_alerts = summary.counts.alerts as usize;
    let expected_revocations = summary.counts.revocations as usize;
    let expected_dead = summary.counts.rejected as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while collected.alerts.len() < expected_alerts
        || collected.revocations.len() < expected_revocations
        || collected.dead_letters.len() < expected_dead
    {
        if Instant::now() > deadline {
            break;
        }
        match seen.recv_timeout(Duration::from_millis(100)) {
            Ok(item) => {
                display.seen(&item);
                collected.add(item);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    live.stop_watcher.store(true, Ordering::Release);
    let _ = watcher.join();
    while let Ok(item) = seen.try_recv() {
        collected.add(item);
    }
    display.finish();
    // Clients first, then the cluster they talk to.
    drop(runtime);
    drop(cluster);

    // The SOC's view, in a stable order: by event time, then id.
    collected.alerts.sort_by(|a, b| a.ts.cmp(&b.ts).then(a.id.cmp(&b.id)));
    collected.alerts.dedup_by(|a, b| a.id == b.id);
    collected
        .revocations
        .sort_by(|a, b| a.ts.cmp(&b.ts).then(a.idempotency_key.cmp(&b.idempotency_key)));
    collected
        .revocations
        .dedup_by(|a, b| a.idempotency_key == b.idempotency_key);
    write_lines(&out.join("alerts.jsonl"), &collected.alerts)?;
    write_lines(&out.join("revocations.jsonl"), &collected.revocations)?;
    write_lines(&out.join("rejected.jsonl"), &collected.dead_letters)?;
    let meta = generation.write_meta(&out, &produced_summary.counts)?;
    let scorecard = score(
        &collected.alerts,
        generation.labels(),
        generation.benign_cases(),
        Some(&meta),
        &ScoreOptions::default(),
    );
    let scorecard_text = serde_json::to_string_pretty(&scorecard).unwrap_or_default();
    write_file(&out.join("scorecard.json"), scorecard_text.as_bytes())?;

    if summary.counts.records != produced_summary.produced {
        return Err(DemoError::Incomplete(format!(
            "the pipeline consumed {} records of the {} produced",
            summary.counts.records, produced_summary.produced
        )));
    }
    Ok(DemoReport {
        produced: produced_summary.produced,
        events: produced_summary.counts.events,
        malformed: produced_summary.malformed,
        processed_records: summary.counts.records,
        processed_events: summary.counts.events,
        dead_letters: summary.counts.rejected,
        alerts_on_topic: collected.alerts.len(),
        revocations_on_topic: collected.revocations.len(),
        dead_letters_on_topic: collected.dead_letters.len(),
        wall_seconds: started.elapsed().as_secs_f64(),
        scorecard,
    })
}

fn demo_config(brokers: &str) -> Config {
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "keywatch-demo"
input_topics = ["{INPUT_TOPIC}"]
input_keyed_by_key_id = true
batch_max_events = 4096
batch_max_wait = "100ms"
checkpoint_interval = "2s"
create_topics = false
"#
    );
    Config::parse(&text, "demo").expect("the demo configuration is valid")
}

fn committed_total(progress: &Progress) -> u64 {
    let snapshot = progress.snapshot();
    snapshot
        .committed
        .get("keyed")
        .map(|partitions| partitions.values().map(|offset| (*offset).max(0) as u64).sum())
        .unwrap_or(0)
}

/// What the status line shows now.
fn status(live: &Live, progress: &Progress, collected: &Collected) -> Status {
    let counts = progress.counts();
    Status {
        event_ts_ms: live.event_ts.load(Ordering::Relaxed),
        events: counts.events,
        keys: progress.keys.load(Ordering::Relaxed),
        alerts: collected.alerts.len(),
        revocations: collected.revocations.len(),
        dead_letters: counts.rejected,
    }
}

/// Counts of what was produced.
struct Produced {
    produced: u64,
    counts: EventCounts,
    malformed: u64,
}

/// Streams the generated events into the input topic, keyed by key id, in
/// accelerated event time, never more than [`MAX_LEAD`] records ahead of
/// the pipeline's committed offsets.
fn produce(
    generation: &Generation,
    brokers: &str,
    speed: f64,
    run_start_ms: i64,
    live: &Live,
    progress: &Progress,
) -> Result<Produced, DemoError> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "100000")
        .create()?;
    let wall_start = Instant::now();
    let mut payload = Vec::with_capacity(512);
    let mut produced = 0u64;
    let mut malformed = 0u64;
    let mut committed = 0u64;
    let result = generation.for_each_event(|event| {
        // Pace by event time inside the run; history before it (dormant
        // keys) goes at once.
        let offset_ms = (event.ts_ms - run_start_ms).max(0) as f64;
        let due = Duration::from_secs_f64(offset_ms / 1000.0 / speed);
        let elapsed = wall_start.elapsed();
        if due > elapsed {
            std::thread::sleep((due - elapsed).min(Duration::from_millis(200)));
        }
        while produced.saturating_sub(committed) >= MAX_LEAD {
            producer.poll(Duration::from_millis(5));
            committed = committed_total(progress);
        }
        if produced.is_multiple_of(512) {
            committed = committed_total(progress);
        }
        payload.clear();
        serde_json::to_writer(&mut payload, event).map_err(|err| DemoError::Incomplete(err.to_string()))?;
        send(&producer, event.key_id.as_bytes(), &payload)?;
        produced += 1;
        live.event_ts.store(event.ts_ms, Ordering::Relaxed);
        live.produced.store(produced, Ordering::Relaxed);
        if produced.is_multiple_of(MALFORMED_EVERY) {
            let broken = format!("{{\"ts\":\"not a time\",\"key_id\":\"{}\"", event.key_id);
            send(&producer, event.key_id.as_bytes(), broken.as_bytes())?;
            produced += 1;
            malformed += 1;
        }
        producer.poll(Duration::ZERO);
        Ok::<(), DemoError>(())
    });
    let flushed = producer.flush(Duration::from_secs(60));
    live.produced.store(produced, Ordering::Relaxed);
    live.producer_done.store(true, Ordering::Release);
    let counts = result?;
    flushed?;
    Ok(Produced {
        produced,
        counts,
        malformed,
    })
}

fn send(producer: &BaseProducer, key: &[u8], payload: &[u8]) -> Result<(), DemoError> {
    let record = BaseRecord::<[u8], [u8]>::to(INPUT_TOPIC).key(key).payload(payload);
    send_when_queue_has_room(producer, record, BaseProducer::send, || {
        producer.poll(Duration::from_millis(10));
    })?;
    Ok(())
}

/// Reads the alerts, revocation and dead-letter topics as their consumers
/// would, from the beginning.
fn watch(brokers: &str, topics: &[String], live: &Live, seen: &mpsc::Sender<Seen>) -> Result<(), KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "keywatch-demo-soc")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    while !live.stop_watcher.load(Ordering::Acquire) {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(message) = message else {
            continue;
        };
        let payload = message.payload().unwrap_or_default();
        let item = if message.topic() == topics[0] {
            serde_json::from_slice::<Alert>(payload)
                .ok()
                .map(|alert| Seen::Alert(Box::new(alert)))
        } else if message.topic() == topics[1] {
            serde_json::from_slice::<RevocationRequest>(payload)
                .ok()
                .map(|request| Seen::Revocation(Box::new(request)))
        } else {
            let mut headers = BTreeMap::new();
            if let Some(list) = message.headers() {
                for header in list.iter() {
                    let value = header
                        .value
                        .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                        .unwrap_or_default();
                    headers.insert(header.key.to_string(), value);
                }
            }
            let record = String::from_utf8_lossy(payload).into_owned();
            Some(Seen::DeadLetter(
                serde_json::json!({"headers": headers, "record": record}).to_string(),
            ))
        };
        if let Some(item) = item
            && seen.send(item).is_err()
        {
            break;
        }
    }
    Ok(())
}

impl Collected {
    fn add(&mut self, item: Seen) {
        match item {
            Seen::Alert(alert) => self.alerts.push(*alert),
            Seen::Revocation(request) => self.revocations.push(*request),
            Seen::DeadLetter(text) => self
                .dead_letters
                .push(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))),
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DemoError> {
    std::fs::write(path, bytes).map_err(|source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn write_lines<T: Serialize>(path: &Path, items: &[T]) -> Result<(), DemoError> {
    let mut writer = JsonlWriter::create(path)?;
    for item in items {
        writer.write(item)?;
    }
    writer.sync()?;
    Ok(())
}
