//! Drives the engine from Kafka: `keywatch run`.
//!
//! Up to two stages run in one process, each a consumer group member with a
//! consumer thread, a processing task and a producer:
//!
//! - when the input is not keyed by API key, the [`repartition`] stage
//!   decodes the input and writes canonical events to the repartition
//!   topic keyed by key fingerprint;
//! - the [`keyed`] stage runs one engine per assigned partition of the keyed
//!   topic and produces alerts, revocation requests and dead letters, and
//!   writes the calls the view across keys needs to the source topic,
//!   keyed by source network;
//! - the [`by_source`] stage runs the source view (`source_spray`) per
//!   partition of the source topic.
//!
//! Per batch: produce outputs, wait for their delivery, write due
//! checkpoints to the compacted changelog, then commit offsets
//! ([`driver`]). A partition's state moves with it through the changelog.
//! Exactly-once mode does the same inside one Kafka transaction per batch.
//!
//! Shutdown (SIGINT, SIGTERM or the caller's cancellation token): stop
//! taking records, finish the batch in hand, deliver, checkpoint, commit,
//! leave the group.

pub mod by_source;
pub mod driver;
pub mod feedback_feed;
pub mod health;
pub mod keyed;
pub mod metrics;
pub mod micro_batch;
pub mod partitions;
pub mod repartition;
pub mod stage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::{CheckpointError, PartitionId, PartitionSnapshot, SnapshotFile, write_snapshot_file};
use crate::config::{Config, KafkaConfig};
use crate::enrich::GeoIp;
use crate::model::Model;
use crate::setup::{EngineArgs, Setup, SetupError};
use crate::sink::kafka::{KafkaSink, KafkaSinkError, OutputTopics};
use crate::source::kafka::KafkaSourceError;
use crate::source::kafka::group::{GroupWatch, KafkaSource, RestoreFrom};
use crate::source::kafka::range::{partition_count, range_consumer, read_checkpoints};

pub use driver::DriverSettings;
pub use stage::{Progress, ProgressSnapshot};

/// What a run did, counted over both stages.
pub type RunSummary = ProgressSnapshot;

/// Command-line options of `keywatch run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Configuration file with a `[kafka]` section.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// On shutdown, write the state of the partitions this instance owns to
    /// DIR/snapshot.json, for `keywatch replay --from-kafka --snapshot`.
    #[arg(long, value_name = "DIR")]
    pub save_snapshot: Option<PathBuf>,
    /// Instead of running, write the newest checkpoint of every partition in
    /// the changelog to FILE (the snapshot file format) and exit.
    #[arg(long, value_name = "FILE", conflicts_with = "save_snapshot")]
    pub export_snapshot: Option<PathBuf>,
}

/// Why the pipeline could not run or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("the configuration has no [kafka] section")]
    NoKafkaSection,
    #[error("topic {topic}: {problem}")]
    Topic { topic: String, problem: String },
    #[error(transparent)]
    Source(#[from] KafkaSourceError),
    #[error(transparent)]
    Sink(#[from] KafkaSinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot commit offsets: {0}")]
    Commit(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot serve /healthz and /readyz on {listen}: {detail}")]
    Health {
        listen: std::net::SocketAddr,
        detail: String,
    },
}

/// The start-up line: what this instance is about to do, without secrets
/// (pass-through properties are listed by name only).
fn log_start(kafka: &KafkaConfig, model: &Model) {
    let properties: Vec<&str> = kafka.properties.keys().map(String::as_str).collect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        brokers = %kafka.brokers,
        input_topics = %kafka.input_topics.join(","),
        input_keyed_by_key_id = kafka.input_keyed_by_key_id,
        group = %kafka.group_id,
        instance = %kafka.instance_name(),
        static_member = kafka.group_instance_id().is_some(),
        session_timeout_s = kafka.session_timeout.as_secs(),
        exactly_once = kafka.exactly_once,
        alerts_topic = %kafka.alerts_topic,
        dead_letter_topic = %kafka.dead_letter_topic,
        changelog_topic = %kafka.changelog_topic,
        model = %model.label(),
        properties = %properties.join(","),
        "keywatch run starting"
    );
}

/// The Kafka stream processor, ready to run.
pub struct Pipeline {
    config: Config,
    kafka: KafkaConfig,
    model: Arc<Model>,
    geo: Arc<GeoIp>,
    progress: Arc<Progress>,
    save_snapshot: Option<PathBuf>,
}

/// Partition counts found or created at start.
#[derive(Debug, Clone)]
struct TopicLayout {
    changelog_partitions: i32,
}

impl Pipeline {
    /// Checks that the configuration has a `[kafka]` section.
    pub fn new(config: Config, model: Arc<Model>, geo: Arc<GeoIp>) -> Result<Pipeline, PipelineError> {
        let kafka = config.kafka.clone().ok_or(PipelineError::NoKafkaSection)?;
        Ok(Pipeline {
            config,
            kafka,
            model,
            geo,
            progress: Arc::new(Progress::default()),
            save_snapshot: None,
        })
    }

    /// Writes `DIR/snapshot.json` with the owned partitions' state on a
    /// clean shutdown.
    pub fn save_snapshot_to(mut self, dir: PathBuf) -> Pipeline {
        self.save_snapshot = Some(dir);
        self
    }

    /// Counters and committed offsets, updated while the pipeline runs.
    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Runs until `cancel` fires (then shuts down cleanly and returns the
    /// summary) or a stage fails.
    pub async fn run(self, cancel: CancellationToken) -> Result<RunSummary, PipelineError> {
        log_start(&self.kafka, &self.model);
        let layout = prepare_topics(&self.kafka).await?;
        // A failing stage stops the other one too.
        let stop = cancel.child_token();
        // Published until the stages have finished, so the final counts show.
        let stages_done = CancellationToken::new();
        let publisher = match self.kafka.metrics_listen {
            Some(listen) => match metrics::install(listen) {
                Ok(()) => {
                    tracing::info!(%listen, "serving prometheus metrics");
                    Some(tokio::spawn(metrics::publish(
                        Arc::clone(&self.progress),
                        stages_done.clone(),
                    )))
                }
                Err(error) => {
                    tracing::warn!(%listen, %error, "cannot serve metrics; running without");
                    None
                }
            },
            None => None,
        };
        let health = match self.kafka.health_listen {
            Some(listen) => {
                let listener = health::bind(listen).await.map_err(|error| PipelineError::Health {
                    listen,
                    detail: error.to_string(),
                })?;
                tracing::info!(%listen, "serving /healthz and /readyz");
                let state = health::HealthState {
                    progress: Arc::clone(&self.progress),
                    stages: self.stage_names(),
                    stale_after: self.kafka.health_stale_after,
                };
                Some(tokio::spawn(health::serve(listener, state, stages_done.clone())))
            }
            None => None,
        };
        let result = self.run_stages(&layout, &stop).await;
        stages_done.cancel();
        if let Some(health) = health {
            let _ = health.await;
        }
        if let Some(publisher) = publisher {
            let _ = publisher.await;
        }
        result?;
        Ok(self.progress.snapshot())
    }

    async fn run_stages(&self, layout: &TopicLayout, stop: &CancellationToken) -> Result<(), PipelineError> {
        let keyed = async {
            let result = self.run_keyed(layout, stop.clone()).await;
            if result.is_err() {
                stop.cancel();
            }
            result
        };
        let by_source = async {
            let result = self.run_by_source(layout, stop.clone()).await;
            if result.is_err() {
                stop.cancel();
            }
            result
        };
        if self.kafka.input_keyed_by_key_id {
            let (keyed_result, source_result) = tokio::join!(keyed, by_source);
            keyed_result?;
            source_result?;
        } else {
            let repartition = async {
                let result = self.run_repartition(layout, stop.clone()).await;
                if result.is_err() {
                    stop.cancel();
                }
                result
            };
            let (keyed_result, repartition_result, source_result) = tokio::join!(keyed, repartition, by_source);
            keyed_result?;
            repartition_result?;
            source_result?;
        }
        Ok(())
    }

    /// The stages this configuration runs, by name.
    fn stage_names(&self) -> Vec<&'static str> {
        let mut names = vec![keyed::STAGE, by_source::STAGE];
        if !self.kafka.input_keyed_by_key_id {
            names.push(repartition::STAGE);
        }
        names
    }

    /// A watch of the consumer group of `stage`, registered for metrics.
    fn group_watch(&self, stage: &'static str) -> GroupWatch {
        let watch = GroupWatch {
            rejoin_idle_after: self.kafka.rejoin_idle_after,
            status: Arc::default(),
        };
        self.progress.watch_group(stage, Arc::clone(&watch.status));
        watch
    }

    fn output_topics(&self, layout: &TopicLayout) -> OutputTopics {
        OutputTopics {
            alerts: self.kafka.alerts_topic.clone(),
            revocations: self.kafka.revocations_topic.clone(),
            digests: self.kafka.digests_topic.clone(),
            dead_letter: self.kafka.dead_letter_topic.clone(),
            changelog: self.kafka.changelog_topic.clone(),
            changelog_partitions: layout.changelog_partitions,
        }
    }

    fn driver_settings(&self) -> DriverSettings {
        DriverSettings {
            batch_max_events: self.kafka.batch_max_events,
            batch_max_bytes: self.kafka.batch_max_bytes,
            batch_max_wait: self.kafka.batch_max_wait,
            checkpoint_interval: self.kafka.checkpoint_interval,
            exactly_once: self.kafka.exactly_once,
            dead_letter_max_bytes: self.kafka.dead_letter_max_bytes,
        }
    }

    fn channel_capacity(&self) -> usize {
        self.kafka.batch_max_events.saturating_mul(2).clamp(64, 100_000)
    }

    async fn sink(&self, transactional_id: String) -> Result<KafkaSink, PipelineError> {
        let transactional_id = self.kafka.exactly_once.then_some(transactional_id);
        let sink = KafkaSink::new(&self.kafka, transactional_id.as_deref())?;
        if sink.is_transactional() {
            sink.init_transactions().await?;
        }
        Ok(sink)
    }

    async fn run_keyed(&self, layout: &TopicLayout, cancel: CancellationToken) -> Result<(), PipelineError> {
        let stage = keyed::KeyedStage::new(
            Arc::clone(&self.model),
            Arc::clone(&self.geo),
            self.config.input.keyed_topics_decoder(self.kafka.input_keyed_by_key_id),
            self.output_topics(layout),
            Arc::clone(&self.progress),
        )
        .with_source_topic(self.kafka.source_topic.clone())
        .with_fingerprinter(self.config.fingerprint.resolved.clone());
        let stage = match &self.kafka.feedback_topic {
            Some(topic) => {
                let feed =
                    feedback_feed::FeedbackFeed::start(&self.kafka, topic).map_err(|err| PipelineError::Topic {
                        topic: topic.clone(),
                        problem: err.to_string(),
                    })?;
                stage.with_feedback(Arc::new(feed), self.kafka.feedback_audit_topic.clone())
            }
            None => stage,
        };
        let sink = self
            .sink(format!("{}-{}", self.kafka.group_id, self.kafka.instance_name()))
            .await?;
        let (source, events) = KafkaSource::start(
            &self.kafka,
            &self.kafka.group_id,
            &self.kafka.keyed_topics(),
            RestoreFrom::Changelog(Box::new(self.kafka.clone())),
            self.channel_capacity(),
            self.group_watch(keyed::STAGE),
            cancel.clone(),
        )?;
        let save_snapshot = self.save_snapshot.clone();
        let driver = driver::Driver::new(stage, source, sink, self.driver_settings(), Arc::clone(&self.progress));
        driver
            .run(events, cancel, move |stage: &keyed::KeyedStage| {
                let Some(dir) = &save_snapshot else {
                    return Ok(());
                };
                std::fs::create_dir_all(dir).map_err(|err| CheckpointError::WriteFile {
                    path: dir.display().to_string(),
                    detail: err.to_string(),
                })?;
                let path = dir.join("snapshot.json");
                let snapshots = stage.snapshots();
                write_snapshot_file(&path, &snapshots)?;
                tracing::info!(path = %path.display(), partitions = snapshots.len(), "snapshot saved");
                Ok(())
            })
            .await
    }

    /// The view across keys, fed by the keyed stage through the source topic.
    async fn run_by_source(&self, layout: &TopicLayout, cancel: CancellationToken) -> Result<(), PipelineError> {
        let stage = by_source::SourceStage::new(
            Arc::clone(&self.model),
            self.output_topics(layout),
            Arc::clone(&self.progress),
        );
        let group_id = self.kafka.source_group_id();
        self.run_stage_without_changelog(stage, &group_id, std::slice::from_ref(&self.kafka.source_topic), cancel)
            .await
    }

    async fn run_repartition(&self, layout: &TopicLayout, cancel: CancellationToken) -> Result<(), PipelineError> {
        let stage = repartition::RepartitionStage::new(
            self.config.input.decoder(),
            self.kafka.repartition_topic.clone(),
            self.output_topics(layout),
            Arc::clone(&self.progress),
        );
        let group_id = self.kafka.repartition_group_id();
        self.run_stage_without_changelog(stage, &group_id, &self.kafka.input_topics, cancel)
            .await
    }

    /// Runs a stage that restores nothing (its state is rebuilt from its
    /// input) in its own consumer group on `topics`.
    async fn run_stage_without_changelog<S: stage::Stage>(
        &self,
        stage: S,
        group_id: &str,
        topics: &[String],
        cancel: CancellationToken,
    ) -> Result<(), PipelineError> {
        let sink = self.sink(format!("{group_id}-{}", self.kafka.instance_name())).await?;
        let (source, events) = KafkaSource::start(
            &self.kafka,
            group_id,
            topics,
            RestoreFrom::Nothing,
            self.channel_capacity(),
            self.group_watch(stage.name()),
            cancel.clone(),
        )?;
        let driver = driver::Driver::new(stage, source, sink, self.driver_settings(), Arc::clone(&self.progress));
        driver.run(events, cancel, |_| Ok(())).await
    }
}

/// Runs the pipeline until `cancel` fires; see [`Pipeline`] to watch
/// progress or save a snapshot.
pub async fn run(
    config: Config,
    model: Arc<Model>,
    geo: Arc<GeoIp>,
    cancel: CancellationToken,
) -> Result<RunSummary, PipelineError> {
    Pipeline::new(config, model, geo)?.run(cancel).await
}

/// Finds the partition counts of the topics and, when configured, creates
/// the missing ones: the changelog compacted, the others with the input's
/// partition count.
async fn prepare_topics(kafka: &KafkaConfig) -> Result<TopicLayout, PipelineError> {
    let probe = range_consumer(kafka, "setup")?;
    let mut input_partitions = 0;
    for topic in &kafka.input_topics {
        match partition_count(&probe, topic)? {
            Some(count) => input_partitions = input_partitions.max(count),
            None => {
                tracing::warn!(topic = %topic, "input topic does not exist yet");
            }
        }
    }
    let partitions = input_partitions.max(1);
    let mut wanted: Vec<(String, bool)> = vec![
        (kafka.alerts_topic.clone(), false),
        (kafka.revocations_topic.clone(), false),
        (kafka.digests_topic.clone(), false),
        (kafka.dead_letter_topic.clone(), false),
        (kafka.changelog_topic.clone(), true),
        (kafka.source_topic.clone(), false),
    ];
    if !kafka.input_keyed_by_key_id {
        wanted.push((kafka.repartition_topic.clone(), false));
    }
    let mut missing = Vec::new();
    for (topic, compacted) in wanted {
        if partition_count(&probe, &topic)?.is_none() {
            missing.push((topic, compacted));
        }
    }
    if !missing.is_empty() && kafka.create_topics {
        create_topics(kafka, &missing, partitions).await?;
    }
    let changelog_partitions =
        partition_count(&probe, &kafka.changelog_topic)?.ok_or_else(|| PipelineError::Topic {
            topic: kafka.changelog_topic.clone(),
            problem: "does not exist; create it with cleanup.policy=compact or set create_topics = true".into(),
        })?;
    Ok(TopicLayout { changelog_partitions })
}

async fn create_topics(kafka: &KafkaConfig, missing: &[(String, bool)], partitions: i32) -> Result<(), PipelineError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config().create().map_err(|error| PipelineError::Topic {
            topic: missing[0].0.clone(),
            problem: format!("cannot create an admin client: {error}"),
        })?;
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(topic, compacted)| {
            let replication = TopicReplication::Fixed(kafka.topic_replication_factor);
            let topic = NewTopic::new(topic, partitions, replication);
            if *compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30)));
    match admin.create_topics(&new_topics, &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(topic) => tracing::info!(topic = %topic, partitions, "topic created"),
                    Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => tracing::warn!(topic = %topic, error = %code, "cannot create topic"),
                }
            }
        }
        // Some brokers (and librdkafka's mock cluster) do not offer the
        // admin API; topics created by other means still work.
        Err(error) => tracing::warn!(%error, "cannot create topics"),
    }
    // Creation is asynchronous on the brokers; metadata follows shortly.
    for _ in 0..50 {
        let probe = range_consumer(kafka, "setup")?;
        let mut all_there = true;
        for (topic, _) in missing {
            all_there &= partition_count(&probe, topic)?.is_some();
        }
        if all_there {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Reads the newest checkpoint of every partition of the keyed topics from
/// the changelog and writes them as a snapshot file. Returns the number of
/// partitions written.
pub fn export_snapshot(kafka: &KafkaConfig, path: &Path) -> Result<usize, PipelineError> {
    let probe = range_consumer(kafka, "export")?;
    let mut partitions = Vec::new();
    for topic in kafka.keyed_topics() {
        let count = partition_count(&probe, &topic)?.ok_or_else(|| PipelineError::Topic {
            topic: topic.clone(),
            problem: "does not exist".into(),
        })?;
        partitions.extend((0..count).map(|partition| PartitionId::new(&topic, partition)));
    }
    let checkpoints = read_checkpoints(kafka, &partitions)?.checkpoints;
    let snapshots: SnapshotFile = checkpoints
        .into_iter()
        .map(|(id, checkpoint)| {
            (
                id.to_string(),
                PartitionSnapshot {
                    next_offset: checkpoint.next_offset,
                    engine: checkpoint.snapshot,
                },
            )
        })
        .collect::<BTreeMap<_, _>>();
    write_snapshot_file(path, &snapshots)?;
    Ok(snapshots.len())
}

/// Cancels `cancel` on SIGINT or SIGTERM.
async fn cancel_on_signal(cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = match signal(SignalKind::terminate()) {
            Ok(terminate) => terminate,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                cancel.cancel();
                return;
            }
        };
        // SIGHUP would end the process by default; it is answered with a
        // warning instead: the GeoIP files and the model are read at start
        // only, and a restart (seconds, with static membership) reloads them.
        let mut hangup = signal(SignalKind::hangup()).ok();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT received");
                    break;
                }
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM received");
                    break;
                }
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(hangup) => hangup.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::warn!("SIGHUP received: GeoIP and model files are not reloaded; restart to load new ones");
                }
                _ = cancel.cancelled() => break,
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            _ = cancel.cancelled() => {}
        }
    }
    cancel.cancel();
}

/// Runs the command.
pub fn run_cli(args: &RunArgs) -> Result<(), PipelineError> {
    let setup = Setup::load(&args.engine.overrides(Some(args.config.clone())))?;
    let kafka = setup.config.kafka.clone().ok_or(PipelineError::NoKafkaSection)?;
    if let Some(path) = &args.export_snapshot {
        let partitions = export_snapshot(&kafka, path)?;
        eprintln!(
            "keywatch: wrote the state of {partitions} partitions to {}",
            path.display()
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("keywatch")
        .build()
        .map_err(PipelineError::Runtime)?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let signals = tokio::spawn(cancel_on_signal(cancel.clone()));
        let mut pipeline = Pipeline::new(setup.config, setup.model, setup.geo)?;
        if let Some(dir) = &args.save_snapshot {
            pipeline = pipeline.save_snapshot_to(dir.clone());
        }
        let result = pipeline.run(cancel.clone()).await;
        cancel.cancel();
        let _ = signals.await;
        let summary = result?;
        let counts = &summary.counts;
        tracing::info!(
            records = counts.records,
            events = counts.events,
            alerts = counts.alerts,
            revocations = counts.revocations,
            dead_letters = counts.rejected,
            "keywatch run stopped"
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn the_pipeline_future_can_be_spawned() {
        let config = Config::parse(
            "[kafka]\nbrokers = \"127.0.0.1:1\"\ninput_topics = [\"in\"]\n",
            "t.toml",
        )
        .unwrap();
        let pipeline = Pipeline::new(config, Arc::new(Model::default_model()), Arc::new(GeoIp::empty())).unwrap();
        let future = pipeline.run(CancellationToken::new());
        assert_send(&future);
    }

    #[test]
    fn a_config_without_kafka_is_refused() {
        let result = Pipeline::new(
            Config::default(),
            Arc::new(Model::default_model()),
            Arc::new(GeoIp::empty()),
        );
        assert!(matches!(result, Err(PipelineError::NoKafkaSection)));
    }
}
