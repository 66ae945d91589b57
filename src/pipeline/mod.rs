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
//!   partition of the source topic;
//! - the [`revocation_gate`] stage judges the revocation candidates of all
//!   keys (one-partition candidates topic) with the policy's caps, then
//!   sends, shadows or drops them by mode; the [`control`] reader feeds it
//!   the kill switch and the service's acknowledgements.
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
pub mod control;
pub mod driver;
pub mod feedback_feed;
pub mod health;
pub mod keyed;
pub mod metrics;
pub mod micro_batch;
pub mod partitions;
pub mod repartition;
pub mod revocation_gate;
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
use crate::owners::{OwnerBook, OwnersError, SharedOwners};
use crate::setup::{EngineArgs, Setup, SetupError};
use crate::sink::kafka::{KafkaSink, KafkaSinkError, OutputTopics};
use crate::source::kafka::KafkaSourceError;
use crate::source::kafka::group::{GroupWatch, KafkaSource, RestoreFrom};
use crate::source::kafka::owners::{follow_owners_topic, read_owners_topic};
use crate::source::kafka::range::{partition_count, range_consumer, read_checkpoints};

pub use driver::DriverSettings;
pub use stage::{Progress, ProgressSnapshot};

/// How long the revocation gate waits for the control topic to be read
/// before it starts.
const CONTROL_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(30);

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
    #[error(
        "no fingerprint secret: set fingerprint.secret_file, --fingerprint-key-file or KEYWATCH_FINGERPRINT_KEY \
         (shared with the revocation service), or fingerprint.unkeyed = true for tests and demos only"
    )]
    NoFingerprintSecret,
    #[error("topic {topic}: {problem}")]
    Topic { topic: String, problem: String },
    #[error(transparent)]
    Source(#[from] KafkaSourceError),
    #[error(transparent)]
    Sink(#[from] KafkaSinkError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Owners(#[from] OwnersError),
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
        alert_format = kafka.alert_format.as_str(),
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
    /// Partitions of the keyed stage's topics, summed (0 when unknown).
    keyed_partitions: u32,
    /// Partitions of the source topic (0 when unknown).
    source_partitions: i32,
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
        let owners_done = CancellationToken::new();
        let (owners, owners_follower) = self.load_owners(owners_done.clone())?;
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
        let feed = Arc::new(control::ControlFeed::default());
        let reader = control::start_reader(&self.kafka, Arc::clone(&feed), stages_done.clone())?;
        let result = self.run_stages(&layout, &stop, &owners, &feed).await;
        stages_done.cancel();
        owners_done.cancel();
        if let Some(follower) = owners_follower {
            let _ = tokio::task::spawn_blocking(move || follower.join()).await;
        }
        let _ = tokio::task::spawn_blocking(move || reader.join()).await;
        if let Some(health) = health {
            let _ = health.await;
        }
        if let Some(publisher) = publisher {
            let _ = publisher.await;
        }
        result?;
        Ok(self.progress.snapshot())
    }

    /// The owners of `owners_file`, then of the owners topic read to its
    /// end, shared with a thread that follows the topic until `stop`.
    fn load_owners(
        &self,
        stop: CancellationToken,
    ) -> Result<(SharedOwners, Option<std::thread::JoinHandle<()>>), PipelineError> {
        let fingerprinter = &self.config.fingerprint.resolved;
        let mut book = match &self.config.owners_file {
            Some(path) => OwnerBook::load(path, fingerprinter)?,
            None => OwnerBook::default(),
        };
        let Some(topic) = &self.kafka.owners_topic else {
            return Ok((Arc::new(std::sync::RwLock::new(book)), None));
        };
        let positions = read_owners_topic(&self.kafka, topic, &mut book, fingerprinter)?;
        let shared = Arc::new(std::sync::RwLock::new(book));
        let follower = follow_owners_topic(
            &self.kafka,
            topic,
            &positions,
            Arc::clone(&shared),
            fingerprinter.clone(),
            stop,
        )?;
        Ok((shared, follower))
    }

    async fn run_stages(
        &self,
        layout: &TopicLayout,
        stop: &CancellationToken,
        owners: &SharedOwners,
        feed: &Arc<control::ControlFeed>,
    ) -> Result<(), PipelineError> {
        let gate = async {
            let result = self
                .run_revocation_gate(layout, stop.clone(), Arc::clone(feed), Arc::clone(owners))
                .await;
            if result.is_err() {
                stop.cancel();
            }
            result
        };
        let keyed = async {
            let result = self.run_keyed(layout, stop.clone(), Arc::clone(owners)).await;
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
            let (keyed_result, source_result, gate_result) = tokio::join!(keyed, by_source, gate);
            keyed_result?;
            source_result?;
            gate_result?;
        } else {
            let repartition = async {
                let result = self.run_repartition(layout, stop.clone()).await;
                if result.is_err() {
                    stop.cancel();
                }
                result
            };
            let (keyed_result, repartition_result, source_result, gate_result) =
                tokio::join!(keyed, repartition, by_source, gate);
            keyed_result?;
            repartition_result?;
            source_result?;
            gate_result?;
        }
        Ok(())
    }

    /// The stages this configuration runs, by name.
    fn stage_names(&self) -> Vec<&'static str> {
        let mut names = vec![keyed::STAGE, by_source::STAGE, revocation_gate::STAGE];
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
            alert_output: crate::sink::kafka::AlertOutput::of(&self.kafka),
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
            idle_release: self.kafka.idle_release,
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

    async fn run_keyed(
        &self,
        layout: &TopicLayout,
        cancel: CancellationToken,
        owners: SharedOwners,
    ) -> Result<(), PipelineError> {
        // The engines' revocation requests are candidates for the gate stage.
        let mut topics = self.output_topics(layout);
        topics.revocations = self.kafka.revocation_candidates_topic.clone();
        let stage = keyed::KeyedStage::new(
            Arc::clone(&self.model),
            Arc::clone(&self.geo),
            self.config.input.keyed_topics_decoder(self.kafka.input_keyed_by_key_id),
            topics,
            Arc::clone(&self.progress),
        )
        .with_source_topic(self.kafka.source_topic.clone(), layout.source_partitions)
        .with_fingerprinter(self.config.fingerprint.resolved.clone())
        .with_owners(owners)
        .with_changelog_format(self.kafka.changelog_format)
        .with_judge_threads(self.kafka.judging_threads())
        .with_candidate_watermarks(layout.keyed_partitions);
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

    /// The revocation gate over all keys, fed by the keyed stage through the
    /// candidates topic; rebuilds its state from that topic's start.
    async fn run_revocation_gate(
        &self,
        layout: &TopicLayout,
        cancel: CancellationToken,
        feed: Arc<control::ControlFeed>,
        owners: SharedOwners,
    ) -> Result<(), PipelineError> {
        let topics = revocation_gate::GateTopics {
            outputs: self.output_topics(layout),
            shadow: self.kafka.revocations_shadow_topic.clone(),
        };
        // The newest kill-switch message must be known before the first
        // candidate is routed, or a restart would send under the model's mode.
        if !feed.wait_ready(CONTROL_CATCH_UP).await {
            tracing::error!(
                topic = %self.kafka.control_topic,
                "the control topic was not read to its end in time; routing by the model's mode until it is"
            );
        }
        let stage =
            revocation_gate::GateStage::new(&self.model, topics, feed, Arc::clone(&self.progress)).with_owners(owners);
        let group_id = self.kafka.revocation_gate_group_id();
        let sink = self.sink(format!("{group_id}-{}", self.kafka.instance_name())).await?;
        let (source, events) = KafkaSource::start(
            &self.kafka,
            &group_id,
            std::slice::from_ref(&self.kafka.revocation_candidates_topic),
            RestoreFrom::Beginning,
            self.channel_capacity(),
            self.group_watch(revocation_gate::STAGE),
            cancel.clone(),
        )?;
        let driver = driver::Driver::new(stage, source, sink, self.driver_settings(), Arc::clone(&self.progress));
        driver.run(events, cancel, |_| Ok(())).await
    }

    async fn run_repartition(&self, layout: &TopicLayout, cancel: CancellationToken) -> Result<(), PipelineError> {
        let stage = repartition::RepartitionStage::new(
            self.config.input.decoder(),
            self.kafka.repartition_topic.clone(),
            self.output_topics(layout),
            Arc::clone(&self.progress),
            self.config.fingerprint.resolved.clone(),
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
    if kafka.alert_format.ocsf() {
        wanted.push((kafka.ocsf_alerts_topic.clone(), false));
    }
    wanted.push((kafka.revocations_shadow_topic.clone(), false));
    wanted.push((kafka.revocation_acks_topic.clone(), false));
    let mut missing = Vec::new();
    for (topic, compacted) in wanted {
        if partition_count(&probe, &topic)?.is_none() {
            missing.push((topic, compacted));
        }
    }
    if !missing.is_empty() && kafka.create_topics {
        create_topics(kafka, &missing, partitions).await?;
    }
    // One partition each: the candidates so that one gate judges every key
    // (the caps are global), the control topic so that "newest" is one order.
    let mut single = Vec::new();
    for topic in [&kafka.revocation_candidates_topic, &kafka.control_topic] {
        if partition_count(&probe, topic)?.is_none() {
            single.push((topic.clone(), false));
        }
    }
    if !single.is_empty() && kafka.create_topics {
        create_topics(kafka, &single, 1).await?;
    }
    if let Some(count) = partition_count(&probe, &kafka.revocation_candidates_topic)?
        && count != 1
    {
        return Err(PipelineError::Topic {
            topic: kafka.revocation_candidates_topic.clone(),
            problem: format!(
                "has {count} partitions; it needs exactly one so that the revocation caps hold over all keys"
            ),
        });
    }
    let changelog_partitions =
        partition_count(&probe, &kafka.changelog_topic)?.ok_or_else(|| PipelineError::Topic {
            topic: kafka.changelog_topic.clone(),
            problem: "does not exist; create it with cleanup.policy=compact or set create_topics = true".into(),
        })?;
    if kafka.skip_changelog_check {
        tracing::warn!(topic = %kafka.changelog_topic, "changelog check skipped (kafka.skip_changelog_check)");
    } else {
        let mut keyed = Vec::new();
        for topic in kafka.keyed_topics() {
            if let Some(count) = partition_count(&probe, &topic)? {
                keyed.push((topic, count));
            }
        }
        let policy = changelog_cleanup_policy(kafka).await;
        if let Some(problem) = changelog_problem(policy.as_deref(), changelog_partitions, &keyed) {
            return Err(PipelineError::Topic {
                topic: kafka.changelog_topic.clone(),
                problem: format!("{problem}; or set kafka.skip_changelog_check = true to start anyway"),
            });
        }
    }
    let mut keyed_partitions = 0;
    for topic in kafka.keyed_topics() {
        keyed_partitions += partition_count(&probe, &topic)?.unwrap_or(0).max(0) as u32;
    }
    let source_partitions = partition_count(&probe, &kafka.source_topic)?.unwrap_or(0).max(0);
    Ok(TopicLayout {
        changelog_partitions,
        keyed_partitions,
        source_partitions,
    })
}

/// The changelog's `cleanup.policy` as the broker describes it; `None`,
/// with a warning, when the broker cannot say (librdkafka's mock cluster
/// has no DescribeConfigs): the partition counts are still checked.
async fn changelog_cleanup_policy(kafka: &KafkaConfig) -> Option<String> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<DefaultClientContext> = match kafka.client_config().create() {
        Ok(admin) => admin,
        Err(error) => {
            tracing::warn!(%error, "cannot check the changelog's cleanup.policy: no admin client");
            return None;
        }
    };
    let options = AdminOptions::new().request_timeout(Some(std::time::Duration::from_secs(15)));
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&kafka.changelog_topic)], &options)
        .await;
    let policy = match described {
        Ok(results) => results.into_iter().find_map(|result| match result {
            Ok(resource) => Some(resource.get("cleanup.policy").and_then(|entry| entry.value.clone())),
            Err(code) => {
                tracing::warn!(topic = %kafka.changelog_topic, error = %code, "cannot describe the changelog's configuration");
                None
            }
        }),
        Err(error) => {
            tracing::warn!(topic = %kafka.changelog_topic, %error, "cannot describe the changelog's configuration");
            None
        }
    };
    match policy {
        Some(Some(policy)) => Some(policy),
        _ => {
            tracing::warn!(
                topic = %kafka.changelog_topic,
                "the changelog's cleanup.policy is unknown; make sure it includes compact"
            );
            None
        }
    }
}

/// What is wrong with an existing changelog, if anything: a cleanup policy
/// without `compact` (retention would delete checkpoints still in use), or
/// a partition count other than a keyed topic's (each input partition's
/// checkpoints must have a changelog partition of their own, as Kafka
/// Streams requires). `policy` is `None` when the broker could not say.
fn changelog_problem(policy: Option<&str>, changelog_partitions: i32, keyed: &[(String, i32)]) -> Option<String> {
    if let Some(policy) = policy
        && !policy.split(',').any(|part| part.trim() == "compact")
    {
        return Some(format!(
            "cleanup.policy is `{policy}` but must include `compact`, or retention deletes the checkpoints \
             the state is restored from; set it with `kafka-configs --alter --entity-type topics \
             --add-config cleanup.policy=compact`"
        ));
    }
    keyed
        .iter()
        .find(|(_, count)| *count != changelog_partitions)
        .map(|(topic, count)| {
            format!(
                "has {changelog_partitions} partitions but the keyed topic {topic} has {count}; they must match \
                 (recreate the changelog with {count} partitions: its state is rebuilt from the input)"
            )
        })
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

/// Exit status of a stop that did not finish within `stop_timeout`.
pub const STOP_TIMED_OUT_EXIT: i32 = 3;

/// Once `cancel` fires, gives the stages `timeout` to finish their batch,
/// deliver, checkpoint and commit, then ends the process: a stage waiting on
/// a broker that accepts no writes would otherwise hold the stop for the
/// producer's whole message timeout. Nothing undelivered has been committed,
/// so what it held is read again after the restart.
async fn exit_if_stop_stalls(cancel: CancellationToken, timeout: std::time::Duration) {
    cancel.cancelled().await;
    tokio::time::sleep(timeout).await;
    tracing::error!(
        stop_timeout_s = timeout.as_secs(),
        exit_status = STOP_TIMED_OUT_EXIT,
        "the stop did not finish within stop_timeout (outputs not confirmed by the broker); \
         exiting without committing them: that input is read again after the restart"
    );
    std::process::exit(STOP_TIMED_OUT_EXIT);
}

/// Runs the command.
pub fn run_cli(args: &RunArgs) -> Result<(), PipelineError> {
    let setup = Setup::load(&args.engine.overrides(Some(args.config.clone())))?;
    let kafka = setup.config.kafka.clone().ok_or(PipelineError::NoKafkaSection)?;
    // Unkeyed fingerprints let anyone holding a guessed key id confirm it
    // from any alert: a deployment chooses them explicitly or not at all.
    if setup.fingerprint_source == crate::setup::FingerprintSource::NoSecret {
        return Err(PipelineError::NoFingerprintSecret);
    }
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
        tokio::spawn(exit_if_stop_stalls(cancel.clone(), kafka.stop_timeout));
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
    fn a_changelog_that_is_not_compacted_or_has_other_partitions_is_named() {
        let keyed = [("access".to_string(), 6)];
        assert_eq!(changelog_problem(Some("compact"), 6, &keyed), None);
        assert_eq!(changelog_problem(Some("compact,delete"), 6, &keyed), None);
        assert_eq!(changelog_problem(None, 6, &keyed), None, "unknown policy: counts only");
        let delete = changelog_problem(Some("delete"), 6, &keyed).unwrap();
        assert!(delete.contains("`delete`") && delete.contains("compact"), "{delete}");
        let count = changelog_problem(Some("compact"), 3, &keyed).unwrap();
        assert!(
            count.contains("3 partitions") && count.contains("access has 6"),
            "{count}"
        );
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
