//! `keywatch keys`: the inventory of every key seen, with its owner, its
//! use and the flags that say which keys to retire (`--stale`: dormant,
//! past expiry, no owner) or narrow (over-privileged). The keys come from a
//! replay of logs (`--input`), from a snapshot file (`--snapshot`) or from
//! the changelog (`--config` alone); [`report`] builds the records and
//! [`table`] prints them for a person.

pub mod report;
pub mod table;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;

use crate::alert::RevocationRequest;
use crate::checkpoint::{CheckpointError, PartitionId, read_snapshot_file};
use crate::decode::Format;
use crate::engine::EngineSnapshot;
use crate::owners::{OwnerBook, OwnersError};
use crate::replay::ReplayError;
use crate::setup::{EngineArgs, Overrides, Setup, SetupError};
use crate::sink::file::OutputFiles;
use crate::source::kafka::KafkaSourceError;
use crate::source::kafka::owners::read_owners_topic;
use crate::source::kafka::range::{partition_count, range_consumer, read_checkpoints};
pub use report::{Flag, Inventory, InventorySettings, KeyRecord};

/// Command-line options of `keywatch keys`.
#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    /// Replay these access log files (plain or gzip) and list their keys.
    #[arg(long, num_args = 1.., conflicts_with = "snapshot")]
    pub input: Vec<PathBuf>,
    /// Input format of --input (overrides the config; `auto` when neither says).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// List the keys of a snapshot file (`run --save-snapshot`, `run --export-snapshot`).
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// Configuration file: decoding and model for --input; alone, the keys
    /// of the newest checkpoints in its changelog topic (and owners from its
    /// owners topic).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Events per micro-batch of the replay (the result does not depend on it).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// With --input: keep the replay's alerts, revocations and rejected records in DIR.
    #[arg(long, value_name = "DIR", requires = "input")]
    pub out: Option<PathBuf>,
    /// Owners file, CSV or JSON lines (overrides the config's `owners_file`).
    #[arg(long, value_name = "FILE")]
    pub owners: Option<PathBuf>,
    /// A key unused for this long is dormant.
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub dormant_after: Duration,
    /// The time flags are judged at (RFC 3339); the newest event time in the data by default.
    #[arg(long)]
    pub now: Option<String>,
    /// A key with a granted scope (`scope_endpoints` in the owners file)
    /// that called at most this share of it is over-privileged.
    #[arg(long, default_value_t = 0.25)]
    pub over_privileged_share: f64,
    /// List only the keys to retire, each with its reasons (dormant, past_expiry, no_owner).
    #[arg(long)]
    pub stale: bool,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Order of the keys.
    #[arg(long, value_enum, default_value = "fingerprint")]
    pub sort: SortOrder,
}

/// How the inventory is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortOrder {
    Fingerprint,
    /// Oldest last use first (ties by fingerprint).
    LastSeen,
}

/// Why the inventory could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Owners(#[from] OwnersError),
    #[error(transparent)]
    Replay(#[from] Box<ReplayError>),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Kafka(#[from] KafkaSourceError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write the inventory: {0}")]
    Write(std::io::Error),
    #[error("cannot use the replay's folder {path}: {source}")]
    Scratch { path: String, source: std::io::Error },
}

/// The keys to list, with what the replay asked to revoke.
struct Gathered {
    snapshots: Vec<EngineSnapshot>,
    revocations: Vec<RevocationRequest>,
}

/// Runs the command.
pub fn run_cli(args: &KeysArgs) -> Result<(), InventoryError> {
    let settings = InventorySettings {
        now_ms: match &args.now {
            Some(text) => Some(
                crate::event::parse_ts(text)
                    .ok_or_else(|| InventoryError::Usage(format!("--now `{text}` is not an RFC 3339 time")))?,
            ),
            None => None,
        },
        dormant_after_ms: args.dormant_after.as_millis() as i64,
        over_privileged_share: args.over_privileged_share,
        ..InventorySettings::default()
    };
    if !(0.0..=1.0).contains(&settings.over_privileged_share) {
        return Err(InventoryError::Usage(
            "--over-privileged-share must be between 0 and 1".into(),
        ));
    }
    let overrides = Overrides {
        format: args.format.clone(),
        batch_size: args.batch_size,
        ..args.engine.overrides(args.config.clone())
    };
    let setup = Setup::load(&overrides)?;
    let mut owners = setup.owners(args.owners.as_deref())?;
    let gathered = if !args.input.is_empty() {
        gather_from_replay(&setup, &args.input, args.out.as_deref(), &owners)?
    } else if let Some(path) = &args.snapshot {
        gather_from_snapshot_file(path)?
    } else if args.config.is_some() {
        let kafka = setup.config.kafka.as_ref().ok_or_else(|| {
            InventoryError::Usage("the config has no [kafka] section to read the changelog of".into())
        })?;
        if let Some(topic) = &kafka.owners_topic {
            read_owners_topic(kafka, topic, &mut owners, setup.fingerprinter())?;
        }
        gather_from_changelog(kafka)?
    } else {
        return Err(InventoryError::Usage(
            "give --input FILE..., --snapshot FILE or --config FILE (to read the changelog)".into(),
        ));
    };
    if owners.is_empty() {
        tracing::warn!("no owners file or topic: every key is listed as no_owner");
    }
    let inventory = report::build(&gathered.snapshots, &owners, &gathered.revocations, &settings);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    write_inventory(&mut out, &inventory, args.stale, args.json, args.sort).map_err(InventoryError::Write)?;
    out.flush().map_err(InventoryError::Write)
}

/// A key and, with `--stale`, why to retire it.
#[derive(Serialize)]
struct StaleLine<'a> {
    #[serde(flatten)]
    key: &'a KeyRecord,
    reasons: Vec<Flag>,
}

/// Writes the inventory (or only its stale keys) as a table or JSON lines.
pub fn write_inventory(
    out: &mut impl Write,
    inventory: &Inventory,
    stale: bool,
    json: bool,
    sort: SortOrder,
) -> std::io::Result<()> {
    let mut keys: Vec<&KeyRecord> = inventory
        .keys
        .iter()
        .filter(|key| !stale || !key.stale_reasons().is_empty())
        .collect();
    if sort == SortOrder::LastSeen {
        // RFC 3339 in UTC with a fixed layout sorts as text.
        keys.sort_by(|a, b| (&a.last_seen, &a.key_fingerprint).cmp(&(&b.last_seen, &b.key_fingerprint)));
    }
    if json {
        for key in keys {
            let line = if stale {
                serde_json::to_string(&StaleLine {
                    key,
                    reasons: key.stale_reasons(),
                })
            } else {
                serde_json::to_string(key)
            };
            writeln!(out, "{}", line.map_err(std::io::Error::other)?)?;
        }
        return Ok(());
    }
    table::write_table(out, inventory.now_ms, &keys, stale)
}

/// Replays the inputs like `keywatch replay` and keeps the engine's end
/// state and the revocation requests.
fn gather_from_replay(
    setup: &Setup,
    inputs: &[PathBuf],
    keep_outputs: Option<&Path>,
    owners: &OwnerBook,
) -> Result<Gathered, InventoryError> {
    let scratch = match keep_outputs {
        Some(_) => None,
        None => Some(ScratchDir::new()?),
    };
    let dir = keep_outputs.or(scratch.as_ref().map(|scratch| scratch.path.as_path()));
    let Some(dir) = dir else {
        return Err(InventoryError::Usage("no folder for the replay's outputs".into()));
    };
    let mut engine = setup.engine();
    let mut outputs = OutputFiles::create(dir).map_err(|error| Box::new(ReplayError::from(error)))?;
    let never = AtomicBool::new(false);
    crate::replay::files::replay_files(
        inputs,
        &setup.config.input.decoder(),
        &mut engine,
        setup.config.input.batch_size,
        &mut outputs,
        None,
        &never,
        owners,
    )
    .map_err(Box::new)?;
    drop(outputs);
    let revocations_path = dir.join("revocations.jsonl");
    let text = std::fs::read_to_string(&revocations_path).map_err(|source| InventoryError::Scratch {
        path: revocations_path.display().to_string(),
        source,
    })?;
    let revocations = text
        .lines()
        .filter_map(|line| serde_json::from_str::<RevocationRequest>(line).ok())
        .collect();
    Ok(Gathered {
        snapshots: vec![engine.snapshot()],
        revocations,
    })
}

fn gather_from_snapshot_file(path: &Path) -> Result<Gathered, InventoryError> {
    let snapshots = read_snapshot_file(path)?
        .into_values()
        .map(|partition| partition.engine)
        .collect();
    Ok(Gathered {
        snapshots,
        revocations: Vec::new(),
    })
}

/// The newest checkpoint of every partition of the keyed topics, read from
/// the changelog as a restore reads it.
fn gather_from_changelog(kafka: &crate::config::KafkaConfig) -> Result<Gathered, InventoryError> {
    let probe = range_consumer(kafka, "inventory")?;
    let mut partitions = Vec::new();
    for topic in kafka.keyed_topics() {
        let Some(count) = partition_count(&probe, &topic)? else {
            tracing::warn!(topic = %topic, "keyed topic does not exist; no keys from it");
            continue;
        };
        partitions.extend((0..count).map(|partition| PartitionId::new(&topic, partition)));
    }
    let restored = read_checkpoints(kafka, &partitions)?;
    let snapshots = restored
        .checkpoints
        .into_values()
        .map(|checkpoint| checkpoint.snapshot)
        .collect();
    Ok(Gathered {
        snapshots,
        revocations: Vec::new(),
    })
}

/// A folder readable by its owner only for a replay's outputs (they name
/// keys and places), removed when dropped.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new() -> Result<ScratchDir, InventoryError> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!("keywatch-keys-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|source| InventoryError::Scratch {
                path: path.display().to_string(),
                source,
            })?;
        Ok(ScratchDir { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
