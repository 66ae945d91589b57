//! `keywatch demo`: the whole system in one process. An in-process Kafka
//! (librdkafka's mock cluster) gets the topics; generated traffic with
//! labelled attacks is produced into the input topic in accelerated event
//! time; the real `keywatch run` pipeline consumes it; a watcher reads the
//! alerts, revocation and dead-letter topics back as the SOC would. At the
//! end the scorecard of `keywatch eval` is printed.
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

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::alert::{Alert, RevocationRequest, Severity};
use crate::config::Config;
use crate::enrich::GeoIp;
use crate::eval::{RunMeta, ScoreOptions, Scorecard, score};
use crate::event::format_ts;
use crate::generate::{GenerateConfig, GenerateError, Generation};
use crate::model::Model;
use crate::pipeline::{Pipeline, PipelineError, Progress};
use crate::sink::file::{JsonlWriter, SinkError};

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

/// Command-line options of `keywatch demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// API keys in the generated traffic.
    #[arg(long, default_value_t = 150)]
    pub keys: usize,
    /// Days of traffic.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Event-time seconds per wall-clock second (a week in about a minute).
    #[arg(long, default_value_t = 10_000.0)]
    pub speed: f64,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Folder for the alert, revocation and rejected files and the scorecard.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// Plain lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error("cannot start the in-process kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot use {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Incomplete(String),
}

/// What the demo did.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Records produced into the input topic (events and malformed ones).
    pub produced: u64,
    pub events: u64,
    pub malformed: u64,
    /// What the pipeline says it consumed.
    pub processed_records: u64,
    pub processed_events: u64,
    pub dead_letters: u64,
    /// Alerts and revocation requests read back from their topics.
    pub alerts_on_topic: usize,
    pub revocations_on_topic: usize,
    pub dead_letters_on_topic: usize,
    pub wall_seconds: f64,
    pub scorecard: Scorecard,
}

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

enum Seen {
    Alert(Box<Alert>),
    Revocation(Box<RevocationRequest>),
    DeadLetter(String),
}

/// Runs the demo and prints as it goes.
pub fn run_cli(args: &DemoArgs) -> Result<(), DemoError> {
    let report = run_demo(args)?;
    println!();
    print!("{}", render_scorecard(&report.scorecard));
    println!(
        "processed {} of {} records in {:.0}s ({} malformed: dead-letter topic)",
        report.processed_records, report.produced, report.wall_seconds, report.dead_letters
    );
    println!(
        "read back {} alerts, {} revocation requests, {} dead letters",
        report.alerts_on_topic, report.revocations_on_topic, report.dead_letters_on_topic
    );
    let out = args.out.display();
    println!("wrote {out}/alerts.jsonl, revocations.jsonl, rejected.jsonl, scorecard.json");
    println!("full table: keywatch eval --alerts {out}/alerts.jsonl --labels {out}/labels.jsonl");
    Ok(())
}

/// Runs the whole demo; returns what happened. Files go to `args.out`.
pub fn run_demo(args: &DemoArgs) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let out = args.out.clone();
    std::fs::create_dir_all(&out).map_err(|source| DemoError::Io {
        path: out.clone(),
        source,
    })?;
    let generation = Generation::new(GenerateConfig::new(args.keys, args.days, args.seed, DEMO_START)?);
    let city = generation.city_database()?;
    let asn = generation.asn_database()?;
    write_file(&out.join("geoip-city.mmdb"), &city)?;
    write_file(&out.join("geoip-asn.mmdb"), &asn)?;
    let geo = Arc::new(GeoIp::from_bytes(Some(city), Some(asn)).map_err(|err| DemoError::Incomplete(err.to_string()))?);
    let model = Arc::new(Model::default_model());
    let labels = generation.labels().to_vec();
    let benign = generation.benign_cases().to_vec();
    write_lines(&out.join("labels.jsonl"), &labels)?;
    write_lines(&out.join("benign.jsonl"), &benign)?;
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
        &kafka.dead_letter_topic,
        &kafka.changelog_topic,
    ] {
        cluster.create_topic(topic, PARTITIONS, 1)?;
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
            display.tick(&live, &progress, &collected);
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
        display.tick(&live, &progress, &collected);
        std::thread::sleep(Duration::from_millis(50));
    }
    cancel.cancel();
    let summary = runtime
        .block_on(pipeline_task)
        .map_err(|err| DemoError::Incomplete(format!("the pipeline task failed: {err}")))??;

    // Read the output topics to their ends.
    let expected_alerts = summary.alerts as usize;
    let expected_revocations = summary.revocations as usize;
    let expected_dead = summary.dead_letters as usize;
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
    let meta = RunMeta {
        keys: args.keys as u64,
        days: u64::from(args.days),
        seed: args.seed,
        start: format_ts(run_start_ms),
        end: format_ts(run_end_ms),
        events: produced_summary.events,
        benign_key_days: produced_summary.benign_key_days,
        incidents: labels.len() as u64,
        benign_cases: benign.len() as u64,
        generator: String::new(),
    };
    let meta_text = serde_json::to_string_pretty(&meta).unwrap_or_default();
    write_file(&out.join("meta.json"), meta_text.as_bytes())?;
    let scorecard = score(
        &collected.alerts,
        &labels,
        &benign,
        Some(&meta),
        &ScoreOptions::default(),
    );
    let scorecard_text = serde_json::to_string_pretty(&scorecard).unwrap_or_default();
    write_file(&out.join("scorecard.json"), scorecard_text.as_bytes())?;

    if summary.records != produced_summary.produced {
        return Err(DemoError::Incomplete(format!(
            "the pipeline consumed {} records of the {} produced",
            summary.records, produced_summary.produced
        )));
    }
    Ok(DemoReport {
        produced: produced_summary.produced,
        events: produced_summary.events,
        malformed: produced_summary.malformed,
        processed_records: summary.records,
        processed_events: summary.events,
        dead_letters: summary.dead_letters,
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

/// Counts of what was produced.
struct Produced {
    produced: u64,
    events: u64,
    malformed: u64,
    benign_key_days: u64,
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
    let (events, benign_key_days) = result?;
    flushed?;
    Ok(Produced {
        produced,
        events,
        malformed,
        benign_key_days,
    })
}

fn send(producer: &BaseProducer, key: &[u8], payload: &[u8]) -> Result<(), DemoError> {
    loop {
        match producer.send(BaseRecord::<[u8], [u8]>::to(INPUT_TOPIC).key(key).payload(payload)) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(10));
            }
            Err((error, _)) => return Err(error.into()),
        }
    }
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

/// The live view: a status line and alerts as they fire, 80 columns wide;
/// plain lines when the output is not a terminal.
struct Display {
    bar: Option<ProgressBar>,
    run_start_ms: i64,
    run_end_ms: i64,
    last_events: u64,
    last_time: Instant,
    rate: f64,
    low_alerts: u64,
    last_plain_status: Instant,
}

impl Display {
    fn new(terminal: bool, run_start_ms: i64, run_end_ms: i64) -> Display {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new((run_end_ms - run_start_ms).max(1) as u64);
            let style = ProgressStyle::with_template("{bar:12} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.println(format!(
                "{:<9} {:<8} {:<12} {:<18} {}",
                "time", "severity", "key", "detector", "evidence"
            ));
            bar
        });
        if bar.is_none() {
            println!("keywatch demo: streaming generated traffic through an in-process kafka");
        }
        Display {
            bar,
            run_start_ms,
            run_end_ms,
            last_events: 0,
            last_time: Instant::now(),
            rate: 0.0,
            low_alerts: 0,
            last_plain_status: Instant::now(),
        }
    }

    fn seen(&mut self, item: &Seen) {
        let line = match item {
            Seen::Alert(alert) if alert.severity == Severity::Low => {
                self.low_alerts += 1;
                return;
            }
            Seen::Alert(alert) => alert_line(alert),
            Seen::Revocation(request) => fit(&format!(
                "{} REVOKE   {:<12} {}",
                short_time(&request.ts),
                request.key_hint,
                request.reason
            )),
            Seen::DeadLetter(_) => return,
        };
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    fn tick(&mut self, live: &Live, progress: &Progress, collected: &Collected) {
        let events = progress.events.load(Ordering::Relaxed);
        let elapsed = self.last_time.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            self.rate = (events - self.last_events) as f64 / elapsed;
            self.last_events = events;
            self.last_time = Instant::now();
        }
        let event_ts = live.event_ts.load(Ordering::Relaxed);
        let status = format!(
            "{} {:>7.0} ev/s keys {} alerts {} (+{} low) revoke {} dlq {}",
            short_time(&format_ts(event_ts)),
            self.rate,
            progress.keys.load(Ordering::Relaxed),
            collected.alerts.len() as u64 - self.low_alerts.min(collected.alerts.len() as u64),
            self.low_alerts,
            collected.revocations.len(),
            progress.dead_letters.load(Ordering::Relaxed),
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position((event_ts - self.run_start_ms).clamp(0, self.run_end_ms - self.run_start_ms) as u64);
                bar.set_message(status);
            }
            None => {
                if self.last_plain_status.elapsed() >= Duration::from_secs(5) {
                    println!("status  {status}");
                    self.last_plain_status = Instant::now();
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The evaluation scorecard in 80 columns: each incident detected or
/// missed with its time to detect and detectors, then the totals.
/// `keywatch eval` on the written files prints the full table.
pub fn render_scorecard(card: &Scorecard) -> String {
    let mut text = String::from("scorecard (keywatch eval, severity >= medium)\n");
    text.push_str(&format!(
        "{:<26} {:<9} {:>9}  {}\n",
        "incident", "result", "detect in", "detectors"
    ));
    for outcome in &card.incident_outcomes {
        let result = if outcome.detected { "detected" } else { "MISSED" };
        let time = outcome.time_to_detect_s.map_or("-".to_string(), |seconds| {
            humantime::format_duration(Duration::from_secs(seconds.max(0.0) as u64)).to_string()
        });
        let detectors: Vec<&str> = outcome.detectors.iter().take(3).map(String::as_str).collect();
        text.push_str(&fit(&format!(
            "{:<26} {:<9} {:>9}  {}",
            outcome.scenario,
            result,
            time,
            detectors.join(", ")
        )));
        text.push('\n');
    }
    let percent = |value: Option<f64>| value.map_or("-".to_string(), |value| format!("{:.0}%", value * 100.0));
    text.push_str(&format!(
        "recall {} ({} of {}), precision {}, false alerts {:.2} per 1,000 benign key-days\n",
        percent(card.recall),
        card.detected,
        card.incidents,
        percent(card.precision),
        card.false_alerts_per_1k_key_days.unwrap_or(0.0),
    ));
    let alerted: usize = card.benign_cases.values().map(|case| case.cases_alerted).sum();
    let cases: usize = card.benign_cases.values().map(|case| case.cases).sum();
    text.push_str(&format!(
        "benign hard cases alerted: {alerted} of {cases}; low alerts (informational): {}\n",
        card.alerts_below_min_severity
    ));
    text
}

/// `Mon 09:14` from an RFC 3339 time.
fn short_time(ts: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(time) => time.format("%a %H:%M").to_string(),
        Err(_) => ts.chars().take(9).collect(),
    }
}

fn alert_line(alert: &Alert) -> String {
    let detector: String = alert.detector.as_str().chars().take(18).collect();
    fit(&format!(
        "{} {:<8} {:<12} {:<18} {}",
        short_time(&alert.ts),
        alert.severity.as_str(),
        alert.key_hint,
        detector,
        alert.summary
    ))
}

/// Cuts a line to 80 columns.
fn fit(line: &str) -> String {
    if line.chars().count() <= 80 {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(79).collect();
    cut.push('…');
    cut
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fit_eighty_columns() {
        let long = "x".repeat(200);
        assert_eq!(fit(&long).chars().count(), 80);
        assert_eq!(fit("short"), "short");
        assert_eq!(short_time("2026-01-05T09:14:00.000Z"), "Mon 09:14");
    }
}
