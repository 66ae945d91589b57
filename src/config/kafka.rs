//! The `[kafka]` section: brokers, topics, group, batching, checkpoints and
//! librdkafka properties, for `keywatch run` and `keywatch replay --from-kafka`;
//! and the librdkafka configuration of every client keywatch makes from it.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// librdkafka properties that keywatch sets itself, because the correctness
/// of offsets, checkpoints and transactions depends on their values.
pub const RESERVED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "transactional.id",
    "isolation.level",
    "enable.idempotence",
    "group.instance.id",
];

/// `fetch.queue.backoff.ms` of the group consumers: how long a full local
/// queue postpones the next fetch.
const FETCH_QUEUE_BACKOFF_MS: u64 = 10;

/// Kafka settings for `keywatch run` and `keywatch replay --from-kafka`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port` separated by commas.
    pub brokers: String,
    /// Consumer group of the keyed processing stage. The repartition stage,
    /// when used, joins the group `<group_id>-repartition`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topics holding access log records, in any configured input format.
    pub input_topics: Vec<String>,
    /// Whether the producers of the input topics use the API key id as the
    /// message key, so that all events of a key are in one partition. When
    /// false, a first stage reads the input and writes each event to
    /// `repartition_topic` keyed by the key's fingerprint; per-key state is
    /// only correct when every event of a key reaches the same partition.
    #[serde(default)]
    pub input_keyed_by_key_id: bool,
    /// Internal topic of canonical events keyed by key fingerprint, used when
    /// `input_keyed_by_key_id` is false. Its records contain raw key ids in
    /// their payload: protect it like the input topics.
    #[serde(default = "default_repartition_topic")]
    pub repartition_topic: String,
    /// Internal topic of the view across keys: calls worth its attention
    /// (from networks unfamiliar to their key and the organisation, or
    /// refused on keys not learned yet), keyed by source
    /// network, read by the source stage (group `<group_id>-by-source`).
    /// Holds key fingerprints and hints, never raw key ids.
    #[serde(default = "default_source_topic")]
    pub source_topic: String,
    /// Alerts, as JSON, keyed by key fingerprint.
    #[serde(default = "default_alerts_topic")]
    pub alerts_topic: String,
    /// Which formats alerts are produced in: `native` (keywatch's own, to
    /// `alerts_topic`), `ocsf` (OCSF 1.5.0 Detection Findings, to
    /// `ocsf_alerts_topic`, schemas/ocsf-detection-finding.schema.json) or
    /// `both`.
    #[serde(default)]
    pub alert_format: crate::ocsf::AlertFormat,
    /// OCSF Detection Findings, as JSON, keyed by key fingerprint; used when
    /// `alert_format` is `ocsf` or `both`.
    #[serde(default = "default_ocsf_alerts_topic")]
    pub ocsf_alerts_topic: String,
    /// Revocation requests, as JSON, keyed by key fingerprint.
    #[serde(default = "default_revocations_topic")]
    pub revocations_topic: String,
    /// Daily digests of each key's low findings, as JSON, keyed by key
    /// fingerprint.
    #[serde(default = "default_digests_topic")]
    pub digests_topic: String,
    /// Revocation requests the gate let through in shadow mode: what
    /// enforcement would send, in the same format, never read by the
    /// revocation service (docs/REVOCATION.md).
    #[serde(default = "default_revocations_shadow_topic")]
    pub revocations_shadow_topic: String,
    /// Internal topic of revocation candidates, one partition: the keyed
    /// stage writes every request the engine asks for, the gate stage
    /// (group `<group_id>-revocation-gate`) judges them over all keys, so
    /// caps hold for the whole deployment.
    #[serde(default = "default_revocation_candidates_topic")]
    pub revocation_candidates_topic: String,
    /// The kill switch: JSON `{"mode":"enforce"|"shadow"|"off","at":..,"by":..}`;
    /// the newest message's mode overrides the model's. Read from its start
    /// by every instance, outside any group.
    #[serde(default = "default_control_topic")]
    pub control_topic: String,
    /// Acknowledgements written by the revocation service:
    /// `{"idempotency_key":..,"status":"revoked"|"rejected"|..}`.
    #[serde(default = "default_revocation_acks_topic")]
    pub revocation_acks_topic: String,
    /// Input records that could not be decoded, byte for byte, with the
    /// headers `reason`, `reason_detail`, `source_topic`, `source_partition`,
    /// `source_offset` and, for multi-event records, `source_index`.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
    /// Compacted topic of engine checkpoints, keyed `<topic>/<partition>` of
    /// the input partition they belong to.
    #[serde(default = "default_changelog_topic")]
    pub changelog_topic: String,
    /// Default topic for `keywatch replay --from-kafka --to-topic`; never the
    /// live alerts topic, so a replay cannot page the on-call team twice.
    #[serde(default)]
    pub replay_topic: Option<String>,
    /// Compacted topic of key owners, read from its beginning by every
    /// instance (never as a group member) and followed while running: key =
    /// key fingerprint, value = a JSON owners entry, empty value = the key
    /// has no owner any more. Entries override `owners_file`.
    #[serde(default)]
    pub owners_topic: Option<String>,
    /// Analysts' feedback and expectations (docs/FEEDBACK.md), JSON one
    /// per message. Every instance reads all of it from the beginning, as
    /// no group member; each partition's engine applies the entries for
    /// its keys by event time. One partition keeps entries in order.
    #[serde(default)]
    pub feedback_topic: Option<String>,
    /// Where the audit of applied feedback goes, keyed by key fingerprint;
    /// absent, to the log only.
    #[serde(default)]
    pub feedback_audit_topic: Option<String>,
    /// Threads that judge the partitions of a micro-batch at once; `0`
    /// (the default) uses every core. Each partition's keys are judged by
    /// one engine, so the outputs, and their order, are the same whatever
    /// the number; more threads than the instance's partitions add nothing.
    #[serde(default)]
    pub judge_threads: usize,
    /// Most input records in one micro-batch.
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: usize,
    /// Most payload bytes of input records in one micro-batch: large records
    /// close a batch early, so memory is bounded by bytes, not only by count.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Longest time a record waits in a micro-batch before it is processed.
    #[serde(default = "default_batch_max_wait", with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// How often the state of each partition is written to the changelog
    /// (at-least-once mode; exactly-once mode checkpoints every batch). A
    /// restart reprocesses at most this much input, emitting nothing for the
    /// part that was already committed.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Write outputs, checkpoints and consumer offsets in one Kafka
    /// transaction per batch, so a restart neither loses nor repeats an
    /// alert. Needs brokers with transaction support and consumers of the
    /// output topics reading with `isolation.level=read_committed`.
    #[serde(default)]
    pub exactly_once: bool,
    /// Stable name of this instance, used for the transactional id
    /// (`<group_id>-<instance_id>`) in exactly-once mode, so that a restarted
    /// instance fences its predecessor. Required in exactly-once mode (two
    /// instances with one name fence each other for ever); otherwise
    /// defaults to `$HOSTNAME`, else `0`.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Start a partition with empty state when the group has committed
    /// offsets for it but the changelog holds no checkpoint of it (the
    /// changelog was deleted or never written). Off, that is an error:
    /// resuming silently without baselines would blind every key. A
    /// checkpoint that exists but cannot be read always falls back (to the
    /// previous one, else to empty state), loudly, without this flag.
    #[serde(default)]
    pub allow_missing_checkpoint: bool,
    /// Create missing topics at start (the changelog compacted), with the
    /// partition count of the first input topic.
    #[serde(default = "default_create_topics")]
    pub create_topics: bool,
    /// Replication factor of topics keywatch creates; `-1` takes the
    /// broker's default.
    #[serde(default = "default_topic_replication_factor")]
    pub topic_replication_factor: i32,
    /// Longest time to read a partition's checkpoint from the changelog when
    /// the partition is assigned.
    #[serde(default = "default_restore_timeout", with = "humantime_serde")]
    pub restore_timeout: Duration,
    /// Address to serve Prometheus metrics on (`0.0.0.0:9464`), under
    /// `/metrics`; no metrics endpoint when absent.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Largest dead letter, in bytes of the original record: longer records
    /// are cut to this size, with the headers `original_size` and
    /// `truncated = true`. Keep it well below the brokers'
    /// `message.max.bytes` (1 MiB by default).
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: usize,
    /// Join the consumer groups as a static member (`group.instance.id` set
    /// to `instance_id`, KIP-345), so that a restarted instance takes its
    /// partitions back at once, without a rebalance, as Kafka Streams does.
    /// Only applies when `instance_id` is set; every instance then needs its
    /// own `instance_id` (a second member with the same one is fenced).
    #[serde(default = "default_static_membership")]
    pub static_membership: bool,
    /// How long the group waits for a silent member before giving its
    /// partitions to others (`session.timeout.ms`). With static membership
    /// a restart within it resumes without a rebalance, so it must be longer
    /// than a restart; a crashed instance that does not come back holds its
    /// partitions this long.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Warn and rejoin the group when a stage has held no partitions this
    /// long while its input has lag that nobody is consuming.
    #[serde(default = "default_rejoin_idle_after", with = "humantime_serde")]
    pub rejoin_idle_after: Duration,
    /// Address to serve `/healthz` and `/readyz` on (`0.0.0.0:9465`); none
    /// when absent.
    #[serde(default)]
    pub health_listen: Option<std::net::SocketAddr>,
    /// `/healthz` fails when a stage's loop has not ticked for this long.
    #[serde(default = "default_health_stale_after", with = "humantime_serde")]
    pub health_stale_after: Duration,
    /// How long SIGINT or SIGTERM waits for the stages to finish the batch
    /// in hand, deliver it, checkpoint and commit. Past it the process exits
    /// with status 3 without committing what is still undelivered (a broker
    /// that accepts no writes, for example): that input is read again after
    /// the restart, and its alerts keep their ids.
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// Skip the start-up check of the changelog topic: when it exists, its
    /// `cleanup.policy` must include `compact` (otherwise retention deletes
    /// checkpoints and the state is lost) and its partition count must equal
    /// the keyed topic's (the input topics when `input_keyed_by_key_id`, the
    /// repartition topic otherwise). Off, a mismatch stops the start.
    #[serde(default)]
    pub skip_changelog_check: bool,
    /// How checkpoints are laid out in the changelog: `incremental` (the
    /// default) writes one entry per key, only for keys changed since the
    /// previous checkpoint (tombstones for evicted keys), plus a small entry
    /// for what the partition shares; `full` writes each partition's whole
    /// state at every checkpoint. Both are read back whatever this says.
    #[serde(default)]
    pub changelog_format: ChangelogFormat,
    /// Wall-clock idleness after which a partition with no new records
    /// judges the events its reorder buffer still holds, instead of waiting
    /// for more input; `0s` (the default) never does. See
    /// docs/OPERATIONS.md: this is the one place the wall clock may release
    /// events, and only their timing can change.
    #[serde(default, with = "humantime_serde")]
    pub idle_release: Duration,
    /// librdkafka properties passed straight to every client: SASL, TLS,
    /// tuning (`security.protocol`, `sasl.mechanism`, `ssl.ca.location`, ...).
    /// The properties keywatch sets itself ([`RESERVED_PROPERTIES`]) are refused.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// How checkpoints are laid out in the changelog (`changelog_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangelogFormat {
    /// The whole state of a partition at every checkpoint.
    Full,
    /// Only the keys changed since the previous checkpoint.
    #[default]
    Incremental,
}

fn default_group_id() -> String {
    "keywatch".to_string()
}

fn default_source_topic() -> String {
    "keywatch-by-source".to_string()
}

fn default_repartition_topic() -> String {
    "keywatch-repartition".to_string()
}

fn default_alerts_topic() -> String {
    "keywatch-alerts".to_string()
}

fn default_ocsf_alerts_topic() -> String {
    "keywatch-alerts-ocsf".to_string()
}

fn default_revocations_topic() -> String {
    "keywatch-revocations".to_string()
}

fn default_digests_topic() -> String {
    "keywatch-digests".to_string()
}

fn default_revocations_shadow_topic() -> String {
    "keywatch-revocations-shadow".to_string()
}

fn default_revocation_candidates_topic() -> String {
    "keywatch-revocation-candidates".to_string()
}

fn default_control_topic() -> String {
    "keywatch-control".to_string()
}

fn default_revocation_acks_topic() -> String {
    "keywatch-revocation-acks".to_string()
}

fn default_dead_letter_topic() -> String {
    "keywatch-dead-letter".to_string()
}

fn default_changelog_topic() -> String {
    "keywatch-changelog".to_string()
}

fn default_batch_max_events() -> usize {
    5000
}

fn default_batch_max_bytes() -> usize {
    32 << 20
}

fn default_batch_max_wait() -> Duration {
    Duration::from_millis(200)
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_create_topics() -> bool {
    true
}

fn default_topic_replication_factor() -> i32 {
    -1
}

fn default_restore_timeout() -> Duration {
    Duration::from_secs(120)
}

/// Default of `dead_letter_max_bytes`: far below the 1 MiB most brokers
/// accept per message, so a dead letter of the largest record the decoder
/// takes, with its headers, always fits.
pub const DEFAULT_DEAD_LETTER_MAX_BYTES: usize = 64 * 1024;

fn default_dead_letter_max_bytes() -> usize {
    DEFAULT_DEAD_LETTER_MAX_BYTES
}

fn default_static_membership() -> bool {
    true
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_rejoin_idle_after() -> Duration {
    Duration::from_secs(60)
}

fn default_health_stale_after() -> Duration {
    Duration::from_secs(60)
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(20)
}

/// Bounds of `dead_letter_max_bytes`: room for a useful excerpt, and below
/// the brokers' default message limit with room for headers.
const DEAD_LETTER_MAX_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=900 * 1024;

/// Kafka's own limit on topic names.
const MAX_TOPIC_NAME_LEN: usize = 249;

fn check_topic_name(field: &str, name: &str) -> Result<(), (String, String)> {
    if name.is_empty() {
        return Err((field.to_string(), "must not be empty".to_string()));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err((
            field.to_string(),
            format!("`{name}` is longer than {MAX_TOPIC_NAME_LEN} characters"),
        ));
    }
    if name == "." || name == ".." {
        return Err((field.to_string(), format!("`{name}` is not a valid topic name")));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err((
            field.to_string(),
            format!("`{name}` has the character `{bad}`; topic names use only a-z A-Z 0-9 . _ -"),
        ));
    }
    Ok(())
}

impl KafkaConfig {
    /// A configuration with every default, for tests and the demo.
    pub fn new(brokers: impl Into<String>, input_topics: Vec<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            group_id: default_group_id(),
            input_topics,
            input_keyed_by_key_id: false,
            repartition_topic: default_repartition_topic(),
            source_topic: default_source_topic(),
            alerts_topic: default_alerts_topic(),
            alert_format: crate::ocsf::AlertFormat::Native,
            ocsf_alerts_topic: default_ocsf_alerts_topic(),
            revocations_topic: default_revocations_topic(),
            digests_topic: default_digests_topic(),
            revocations_shadow_topic: default_revocations_shadow_topic(),
            revocation_candidates_topic: default_revocation_candidates_topic(),
            control_topic: default_control_topic(),
            revocation_acks_topic: default_revocation_acks_topic(),
            dead_letter_topic: default_dead_letter_topic(),
            changelog_topic: default_changelog_topic(),
            replay_topic: None,
            owners_topic: None,
            feedback_topic: None,
            feedback_audit_topic: None,
            batch_max_events: default_batch_max_events(),
            batch_max_bytes: default_batch_max_bytes(),
            batch_max_wait: default_batch_max_wait(),
            checkpoint_interval: default_checkpoint_interval(),
            judge_threads: 0,
            exactly_once: false,
            instance_id: None,
            allow_missing_checkpoint: false,
            create_topics: default_create_topics(),
            topic_replication_factor: default_topic_replication_factor(),
            restore_timeout: default_restore_timeout(),
            metrics_listen: None,
            dead_letter_max_bytes: default_dead_letter_max_bytes(),
            static_membership: default_static_membership(),
            session_timeout: default_session_timeout(),
            rejoin_idle_after: default_rejoin_idle_after(),
            health_listen: None,
            health_stale_after: default_health_stale_after(),
            stop_timeout: default_stop_timeout(),
            skip_changelog_check: false,
            changelog_format: ChangelogFormat::default(),
            idle_release: Duration::ZERO,
            properties: BTreeMap::new(),
        }
    }

    /// Threads `judge_threads` means: every core when it is 0.
    pub fn judging_threads(&self) -> usize {
        match self.judge_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => threads,
        }
    }

    /// The topics the keyed stage consumes: the input topics when they are
    /// keyed by key id, the repartition topic otherwise.
    pub fn keyed_topics(&self) -> Vec<String> {
        if self.input_keyed_by_key_id {
            self.input_topics.clone()
        } else {
            vec![self.repartition_topic.clone()]
        }
    }

    /// The consumer group of the source stage (the view across keys).
    pub fn source_group_id(&self) -> String {
        format!("{}-by-source", self.group_id)
    }

    /// The consumer group of the revocation gate stage.
    pub fn revocation_gate_group_id(&self) -> String {
        format!("{}-revocation-gate", self.group_id)
    }

    /// The consumer group of the repartition stage.
    pub fn repartition_group_id(&self) -> String {
        format!("{}-repartition", self.group_id)
    }

    /// The instance name used in transactional ids.
    pub fn instance_name(&self) -> String {
        self.instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|name| !name.is_empty()))
            .unwrap_or_else(|| "0".to_string())
    }

    /// The `group.instance.id` of this instance's consumers: its configured
    /// `instance_id` when static membership is on. Never the `$HOSTNAME`
    /// fallback: two members with one id fence each other, and instances
    /// started side by side (tests, the demo) share a hostname.
    pub fn group_instance_id(&self) -> Option<&str> {
        self.static_membership.then_some(self.instance_id.as_deref()).flatten()
    }

    /// The configuration every keywatch client starts from: brokers plus
    /// the pass-through properties.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
    }

    /// An idempotent producer (so retries neither reorder nor repeat), made
    /// transactional when `transactional_id` is given.
    pub fn producer_config(&self, transactional_id: Option<&str>) -> ClientConfig {
        let mut config = self.client_config();
        config.set("enable.idempotence", "true");
        // Every batch waits for its outputs' acknowledgements before the
        // next is judged, so messages lingering in the producer for a
        // larger request only delay that wait (librdkafka's default is
        // 5 ms a batch); the outbox already hands them over together.
        if !self.properties.contains_key("linger.ms") && !self.properties.contains_key("queue.buffering.max.ms") {
            config.set("linger.ms", "0");
        }
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        config
    }

    /// A member of the consumer group `group_id` that commits its offsets
    /// itself, only after what they cover is delivered.
    pub fn group_consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Never process records of aborted transactions, including our
            // own repartition stage's in exactly-once mode.
            .set("isolation.level", "read_committed");
        if let Some(instance) = self.group_instance_id() {
            config.set("group.instance.id", instance);
        }
        if !self.properties.contains_key("session.timeout.ms") {
            config.set("session.timeout.ms", self.session_timeout.as_millis().to_string());
        }
        self.fetch_soon_after_a_full_queue(&mut config);
        if !self.properties.contains_key("auto.offset.reset") {
            // A new group reads what is retained rather than only what comes
            // next: a detector should see the history it can.
            config.set("auto.offset.reset", "earliest");
        }
        config
    }

    /// A reader of topic ranges: never subscribes, never commits, and is
    /// told when it reaches the end of a partition. librdkafka needs a
    /// group id to assign partitions; this one, named for `purpose`, is
    /// never joined.
    pub fn range_consumer_config(&self, purpose: &str) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", format!("{}-{purpose}", self.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed");
        self.fetch_soon_after_a_full_queue(&mut config);
        config
    }

    /// Catching up on a backlog, a consumer fills its local queue faster
    /// than keywatch judges it; librdkafka then waits
    /// `fetch.queue.backoff.ms` before fetching again, 1 s by default, and
    /// keywatch sat idle for most of each second once it had drained the
    /// queue. Unless the properties say otherwise, it waits 10 ms.
    fn fetch_soon_after_a_full_queue(&self, config: &mut ClientConfig) {
        if !self.properties.contains_key("fetch.queue.backoff.ms") {
            config.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS.to_string());
        }
    }

    /// Checks the section; returns the offending field and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |field: &str, problem: String| Err((field.to_string(), problem));
        if self.brokers.split(',').all(|broker| broker.trim().is_empty()) {
            return invalid("brokers", "must name at least one broker".into());
        }
        if self.group_id.trim().is_empty() {
            return invalid("group_id", "must not be empty".into());
        }
        if self.input_topics.is_empty() {
            return invalid("input_topics", "must name at least one topic".into());
        }
        for (index, topic) in self.input_topics.iter().enumerate() {
            check_topic_name(&format!("input_topics[{index}]"), topic)?;
            if self.input_topics[..index].contains(topic) {
                return invalid(&format!("input_topics[{index}]"), format!("`{topic}` is listed twice"));
            }
        }
        let mut outputs: Vec<(&str, &str)> = vec![
            ("alerts_topic", &self.alerts_topic),
            ("revocations_topic", &self.revocations_topic),
            ("digests_topic", &self.digests_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
            ("changelog_topic", &self.changelog_topic),
            ("source_topic", &self.source_topic),
            ("revocations_shadow_topic", &self.revocations_shadow_topic),
            ("revocation_candidates_topic", &self.revocation_candidates_topic),
            ("control_topic", &self.control_topic),
            ("revocation_acks_topic", &self.revocation_acks_topic),
        ];
        if !self.input_keyed_by_key_id {
            outputs.push(("repartition_topic", &self.repartition_topic));
        }
        if let Some(replay_topic) = &self.replay_topic {
            outputs.push(("replay_topic", replay_topic));
        }
        if self.alert_format.ocsf() {
            outputs.push(("ocsf_alerts_topic", &self.ocsf_alerts_topic));
        }
        // Not an output, but a topic of its own all the same.
        if let Some(owners_topic) = &self.owners_topic {
            outputs.push(("owners_topic", owners_topic));
        }
        for (index, (field, topic)) in outputs.iter().enumerate() {
            check_topic_name(field, topic)?;
            if self.input_topics.iter().any(|input| input == topic) {
                return invalid(field, format!("`{topic}` is also an input topic"));
            }
            if let Some((other, _)) = outputs[..index].iter().find(|(_, earlier)| earlier == topic) {
                return invalid(
                    field,
                    format!("`{topic}` is also `{other}`; every output needs its own topic"),
                );
            }
        }
        if self.batch_max_events == 0 {
            return invalid("batch_max_events", "must be at least 1".into());
        }
        if self.batch_max_bytes == 0 {
            return invalid("batch_max_bytes", "must be at least 1".into());
        }
        if self.batch_max_wait.is_zero() {
            return invalid("batch_max_wait", "must be longer than zero".into());
        }
        if self.restore_timeout.is_zero() {
            return invalid("restore_timeout", "must be longer than zero".into());
        }
        if !DEAD_LETTER_MAX_BYTES_RANGE.contains(&self.dead_letter_max_bytes) {
            return invalid(
                "dead_letter_max_bytes",
                format!(
                    "must be between {} and {} bytes",
                    DEAD_LETTER_MAX_BYTES_RANGE.start(),
                    DEAD_LETTER_MAX_BYTES_RANGE.end()
                ),
            );
        }
        // The brokers' default group.min.session.timeout.ms and
        // group.max.session.timeout.ms.
        if self.session_timeout < Duration::from_secs(6) || self.session_timeout > Duration::from_secs(1800) {
            return invalid("session_timeout", "must be between 6s and 30m".into());
        }
        if self.rejoin_idle_after < Duration::from_secs(1) {
            return invalid("rejoin_idle_after", "must be at least 1s".into());
        }
        if self.health_stale_after < Duration::from_secs(1) {
            return invalid("health_stale_after", "must be at least 1s".into());
        }
        if self.stop_timeout < Duration::from_secs(1) {
            return invalid("stop_timeout", "must be at least 1s".into());
        }
        if self.topic_replication_factor == 0 || self.topic_replication_factor < -1 {
            return invalid(
                "topic_replication_factor",
                "must be at least 1, or -1 for the broker default".into(),
            );
        }
        if self.exactly_once && self.instance_id.is_none() {
            return invalid(
                "instance_id",
                "is required with exactly_once: each instance needs its own stable, unique name for its transactional id".into(),
            );
        }
        if let Some(instance) = &self.instance_id
            && (instance.is_empty() || instance.chars().any(char::is_whitespace))
        {
            return invalid("instance_id", "must be a non-empty name without spaces".into());
        }
        for name in self.properties.keys() {
            if RESERVED_PROPERTIES.contains(&name.as_str()) {
                return invalid(
                    &format!("properties.\"{name}\""),
                    "is set by keywatch itself (use `brokers`, `group_id`, `exactly_once`)".into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const FULL: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
group_id = "kw"
input_topics = ["access"]
input_keyed_by_key_id = true
alerts_topic = "alerts"
revocations_topic = "revocations"
dead_letter_topic = "dlq"
changelog_topic = "changelog"
replay_topic = "alerts-replay"
batch_max_events = 100
batch_max_wait = "50ms"
checkpoint_interval = "2s"
exactly_once = true
instance_id = "a"
metrics_listen = "127.0.0.1:9464"
properties = { "security.protocol" = "plaintext", "linger.ms" = "5" }
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "k.toml").map_err(|err| err.to_string())
    }

    #[test]
    fn parses_every_field_in_human_form() {
        let kafka = parse(FULL).unwrap().kafka.unwrap();
        assert_eq!(kafka.batch_max_wait, Duration::from_millis(50));
        assert_eq!(kafka.checkpoint_interval, Duration::from_secs(2));
        assert_eq!(kafka.properties.get("linger.ms").map(String::as_str), Some("5"));
        assert_eq!(kafka.keyed_topics(), vec!["access".to_string()]);
        assert_eq!(kafka.instance_name(), "a");
        assert_eq!(kafka.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn minimal_section_takes_defaults() {
        let kafka = parse("[kafka]\nbrokers = \"b:9092\"\ninput_topics = [\"in\"]\n")
            .unwrap()
            .kafka
            .unwrap();
        assert_eq!(kafka, KafkaConfig::new("b:9092", vec!["in".into()]));
        assert!(!kafka.input_keyed_by_key_id, "repartitioning is the safe default");
        assert_eq!(kafka.keyed_topics(), vec!["keywatch-repartition".to_string()]);
        assert_eq!(kafka.batch_max_wait, Duration::from_millis(200));
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        let cases = [
            ("bogus = 1", "bogus"),
            ("batch_max_events = 0", "kafka.batch_max_events"),
            ("batch_max_wait = \"soon\"", "soon"),
            (
                "alerts_topic = \"dlq\"\ndead_letter_topic = \"dlq\"",
                "kafka.dead_letter_topic",
            ),
            ("alerts_topic = \"in\"", "kafka.alerts_topic"),
            ("replay_topic = \"keywatch-alerts\"", "kafka.replay_topic"),
            ("changelog_topic = \"a b\"", "kafka.changelog_topic"),
            ("properties = { \"group.id\" = \"x\" }", "group.id"),
            ("group_id = \" \"", "kafka.group_id"),
        ];
        for (extra, expected) in cases {
            let text = format!("[kafka]\nbrokers = \"b:9092\"\ninput_topics = [\"in\"]\n{extra}\n");
            let err = parse(&text).expect_err(extra);
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let err = parse("[kafka]\nbrokers = \"\"\ninput_topics = [\"in\"]\n").unwrap_err();
        assert!(err.contains("kafka.brokers"), "{err}");
        let err = parse("[kafka]\nbrokers = \"b\"\ninput_topics = []\n").unwrap_err();
        assert!(err.contains("kafka.input_topics"), "{err}");
    }

    #[test]
    fn client_config_passes_properties_through() {
        let mut kafka = KafkaConfig::new("b1:9092,b2:9092", vec!["in".into()]);
        kafka.properties.insert("security.protocol".into(), "sasl_ssl".into());
        let config = kafka.client_config();
        assert_eq!(config.get("bootstrap.servers"), Some("b1:9092,b2:9092"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        let producer = kafka.producer_config(Some("kw-0"));
        assert_eq!(producer.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(producer.get("transactional.id"), Some("kw-0"));
        assert_eq!(kafka.producer_config(None).get("transactional.id"), None);
    }

    #[test]
    fn a_new_group_starts_from_the_earliest_record_unless_told_otherwise() {
        let mut kafka = KafkaConfig::new("b:9092", vec!["in".into()]);
        assert_eq!(
            kafka.group_consumer_config("g").get("auto.offset.reset"),
            Some("earliest")
        );
        kafka.properties.insert("auto.offset.reset".into(), "latest".into());
        assert_eq!(
            kafka.group_consumer_config("g").get("auto.offset.reset"),
            Some("latest")
        );
        assert_eq!(
            kafka.range_consumer_config("replay").get("group.id"),
            Some("keywatch-replay")
        );
    }

    #[test]
    fn clients_do_not_wait_for_librdkafka_defaults_that_idle_a_catching_up_pipeline_unless_told_to() {
        let mut kafka = KafkaConfig::new("b:9092", vec!["in".into()]);
        assert_eq!(kafka.producer_config(None).get("linger.ms"), Some("0"));
        assert_eq!(
            kafka.group_consumer_config("g").get("fetch.queue.backoff.ms"),
            Some("10")
        );
        assert_eq!(
            kafka.range_consumer_config("r").get("fetch.queue.backoff.ms"),
            Some("10")
        );
        kafka.properties.insert("linger.ms".into(), "5".into());
        kafka.properties.insert("fetch.queue.backoff.ms".into(), "1000".into());
        assert_eq!(kafka.producer_config(None).get("linger.ms"), Some("5"));
        assert_eq!(
            kafka.group_consumer_config("g").get("fetch.queue.backoff.ms"),
            Some("1000")
        );
        assert_eq!(
            kafka.range_consumer_config("r").get("fetch.queue.backoff.ms"),
            Some("1000")
        );
        kafka.properties.remove("linger.ms");
        kafka.properties.insert("queue.buffering.max.ms".into(), "20".into());
        assert_eq!(
            kafka.producer_config(None).get("linger.ms"),
            None,
            "the alias is left to librdkafka"
        );
    }

    #[test]
    fn judge_threads_of_zero_means_every_core() {
        let mut kafka = KafkaConfig::new("b:9092", vec!["in".into()]);
        assert_eq!(
            kafka.judging_threads(),
            std::thread::available_parallelism().map_or(1, usize::from)
        );
        kafka.judge_threads = 3;
        assert_eq!(kafka.judging_threads(), 3);
    }

    #[test]
    fn static_membership_uses_only_an_explicit_instance_id() {
        let mut kafka = KafkaConfig::new("b:9092", vec!["in".into()]);
        let consumer = kafka.group_consumer_config("g");
        assert_eq!(consumer.get("group.instance.id"), None, "no id, no static membership");
        assert_eq!(consumer.get("session.timeout.ms"), Some("30000"));
        kafka.instance_id = Some("kw-2".into());
        assert_eq!(kafka.group_consumer_config("g").get("group.instance.id"), Some("kw-2"));
        kafka.static_membership = false;
        assert_eq!(kafka.group_consumer_config("g").get("group.instance.id"), None);
        kafka.properties.insert("session.timeout.ms".into(), "45000".into());
        assert_eq!(
            kafka.group_consumer_config("g").get("session.timeout.ms"),
            Some("45000")
        );
    }

    #[test]
    fn operations_settings_are_checked() {
        let cases = [
            ("dead_letter_max_bytes = 10", "kafka.dead_letter_max_bytes"),
            ("dead_letter_max_bytes = 2000000", "kafka.dead_letter_max_bytes"),
            ("session_timeout = \"1s\"", "kafka.session_timeout"),
            ("rejoin_idle_after = \"0s\"", "kafka.rejoin_idle_after"),
            ("health_stale_after = \"0s\"", "kafka.health_stale_after"),
            ("stop_timeout = \"0s\"", "kafka.stop_timeout"),
            ("properties = { \"group.instance.id\" = \"x\" }", "group.instance.id"),
        ];
        for (extra, expected) in cases {
            let text = format!("[kafka]\nbrokers = \"b:9092\"\ninput_topics = [\"in\"]\n{extra}\n");
            let err = parse(&text).expect_err(extra);
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let kafka = parse(
            "[kafka]\nbrokers = \"b\"\ninput_topics = [\"in\"]\nsession_timeout = \"45s\"\n\
             health_listen = \"127.0.0.1:9465\"\ndead_letter_max_bytes = 4096\n",
        )
        .unwrap()
        .kafka
        .unwrap();
        assert_eq!(kafka.session_timeout, Duration::from_secs(45));
        assert_eq!(kafka.dead_letter_max_bytes, 4096);
        assert!(kafka.health_listen.is_some());
    }

    #[test]
    fn repartition_topic_only_matters_when_used() {
        let text = "[kafka]\nbrokers = \"b\"\ninput_topics = [\"in\"]\ninput_keyed_by_key_id = true\n\
                    repartition_topic = \"keywatch-alerts\"\n";
        assert!(parse(text).is_ok());
        let text = "[kafka]\nbrokers = \"b\"\ninput_topics = [\"in\"]\nrepartition_topic = \"keywatch-alerts\"\n";
        assert!(parse(text).unwrap_err().contains("kafka.repartition_topic"));
    }

    #[test]
    fn exactly_once_requires_an_explicit_instance_id() {
        let without = FULL.replace("instance_id = \"a\"\n", "");
        let err = parse(&without).unwrap_err();
        assert!(err.contains("instance_id") && err.contains("exactly_once"), "{err}");
        let at_least_once = without.replace("exactly_once = true", "exactly_once = false");
        assert!(parse(&at_least_once).is_ok(), "only exactly-once needs it");
    }

    #[test]
    fn ocsf_alerts_get_their_own_topic_when_asked_for() {
        let base = "[kafka]\nbrokers = \"b\"\ninput_topics = [\"in\"]\n";
        let kafka = parse(base).unwrap().kafka.unwrap();
        assert_eq!(kafka.alert_format, crate::ocsf::AlertFormat::Native);
        assert_eq!(kafka.ocsf_alerts_topic, "keywatch-alerts-ocsf");
        let both = parse(&format!(
            "{base}alert_format = \"both\"\nocsf_alerts_topic = \"keywatch.alerts.ocsf\"\n"
        ))
        .unwrap()
        .kafka
        .unwrap();
        assert!(both.alert_format.native() && both.alert_format.ocsf());
        assert_eq!(both.ocsf_alerts_topic, "keywatch.alerts.ocsf");
        let clash = format!("{base}alert_format = \"ocsf\"\nocsf_alerts_topic = \"keywatch-alerts\"\n");
        assert!(parse(&clash).unwrap_err().contains("kafka.ocsf_alerts_topic"));
        // Unused, the OCSF topic may be anything.
        assert!(parse(&format!("{base}ocsf_alerts_topic = \"keywatch-alerts\"\n")).is_ok());
        assert!(parse(&format!("{base}alert_format = \"xml\"\n")).is_err());
    }

    #[test]
    fn a_missing_checkpoint_is_not_allowed_unless_configured() {
        let kafka = parse(FULL).unwrap().kafka.unwrap();
        assert!(!kafka.allow_missing_checkpoint);
        let allowed = FULL.replace(
            "exactly_once = true",
            "exactly_once = true\nallow_missing_checkpoint = true",
        );
        assert!(parse(&allowed).unwrap().kafka.unwrap().allow_missing_checkpoint);
    }
}
