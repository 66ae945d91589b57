//! Checkpoints of the engine state of each input partition: how they are
//! laid out as changelog messages, put back together when a partition is
//! assigned, and saved to or loaded from a snapshot file.
//!
//! A checkpoint is the engine snapshot of one partition plus the offset of
//! the next record it has not seen. A snapshot can be far larger than a
//! Kafka message may be, so it is written as gzip-compressed chunks followed
//! by a small manifest:
//!
//! - manifest, key `<topic>/<partition>`: offset, generation, slot, chunk
//!   count, length and SHA-256 of the compressed snapshot, and the consumer
//!   group generation of the instance that wrote it; the same manifest is
//!   also written under `<topic>/<partition>/<slot>`, so the previous
//!   generation's manifest survives compaction next to the newest;
//! - chunks, key `<topic>/<partition>/<slot>/<index>`: `KWC1`, the
//!   generation (8 bytes, big endian), then up to [`CHUNK_BYTES`] of data.
//!
//! Successive generations alternate between two slots, so on a compacted
//! topic writing generation `g + 1` never overwrites a chunk that the
//! current manifest (generation `g`) still points at: a crash in the middle
//! of a checkpoint leaves the previous one whole. Chunks are written before
//! their manifest, and a reader that reads the partition to its end takes
//! the newest manifest and the newest chunk of each key.
//!
//! Restores cannot crash-loop: a checkpoint that cannot be used (a damaged
//! manifest or chunk, a size beyond the limits below, a snapshot that does
//! not parse) falls back to the previous generation, and failing that to
//! empty state for that partition alone, which then rebuilds from the
//! input. Every size is checked before it is allocated or inflated. A
//! manifest written by an older group generation than another manifest of
//! the partition (a zombie instance still writing after a rebalance) is
//! tried last.
//!
//! Everything here is pure apart from the snapshot file functions; the
//! changelog is read in [`crate::source::kafka::range`] and written in
//! [`crate::sink::kafka`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::EngineSnapshot;

/// Version of the manifest layout.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;

/// Largest chunk of compressed snapshot in one message: well below the
/// 1 MiB default of `message.max.bytes` on brokers and producers.
pub const CHUNK_BYTES: usize = 512 * 1024;

/// Largest compressed checkpoint accepted from a manifest.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;
/// Largest snapshot a checkpoint may inflate to.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

const CHUNK_MAGIC: &[u8; 4] = b"KWC1";
const CHUNK_HEADER_BYTES: usize = 12;

/// Why a checkpoint or snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot encode the checkpoint of {partition}: {detail}")]
    Encode { partition: String, detail: String },
    #[error("the checkpoint of {partition} in the changelog is unusable: {detail}")]
    Corrupt { partition: String, detail: String },
    #[error("cannot read snapshot file {path}: {detail}")]
    ReadFile { path: String, detail: String },
    #[error("cannot write snapshot file {path}: {detail}")]
    WriteFile { path: String, detail: String },
}

/// One partition of one input topic: the unit that owns engine state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PartitionId {
    pub topic: String,
    pub partition: i32,
}

impl PartitionId {
    pub fn new(topic: impl Into<String>, partition: i32) -> PartitionId {
        PartitionId {
            topic: topic.into(),
            partition,
        }
    }

    /// Parses `<topic>/<partition>`; topic names cannot contain `/`.
    pub fn parse(text: &str) -> Option<PartitionId> {
        let (topic, partition) = text.split_once('/')?;
        if topic.is_empty() || partition.contains('/') {
            return None;
        }
        Some(PartitionId::new(topic, partition.parse().ok()?))
    }

    /// The changelog message key of this partition's manifest.
    pub fn changelog_key(&self) -> String {
        self.to_string()
    }

    fn slot_manifest_key(&self, slot: u8) -> String {
        format!("{self}/{slot}")
    }

    fn chunk_key(&self, slot: u8, index: u32) -> String {
        format!("{self}/{slot}/{index}")
    }

    /// The changelog partition holding this partition's checkpoints.
    pub fn changelog_partition(&self, changelog_partitions: i32) -> i32 {
        self.partition.rem_euclid(changelog_partitions.max(1))
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.topic, self.partition)
    }
}

/// The state of one partition's engine after every record before
/// `next_offset`.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub partition: PartitionId,
    /// Offset of the first record the snapshot has not seen.
    pub next_offset: i64,
    /// Counts the checkpoints of the partition; picks the slot.
    pub generation: u64,
    /// The consumer group generation of the instance that wrote it, when
    /// known: a higher one wins over any checkpoint of a lower one.
    pub group_generation: Option<i32>,
    pub snapshot: EngineSnapshot,
}

/// The small message that makes a checkpoint's chunks valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub generation: u64,
    pub slot: u8,
    pub chunks: u32,
    /// Length of the compressed snapshot.
    pub bytes: u64,
    /// Hex SHA-256 of the compressed snapshot.
    pub sha256: String,
    /// The consumer group generation of the writer (absent in manifests of
    /// older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_generation: Option<i32>,
}

/// One message to write to the changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogMessage {
    pub key: String,
    pub value: Vec<u8>,
}

fn slot_of(generation: u64) -> u8 {
    (generation % 2) as u8
}

/// Lays a checkpoint out as changelog messages, chunks first, manifest last:
/// they must be written in this order.
pub fn encode_checkpoint(checkpoint: &Checkpoint) -> Result<Vec<ChangelogMessage>, CheckpointError> {
    let partition = &checkpoint.partition;
    let encode_error = |detail: String| CheckpointError::Encode {
        partition: partition.to_string(),
        detail,
    };
    let json = serde_json::to_vec(&checkpoint.snapshot).map_err(|err| encode_error(err.to_string()))?;
    // Fast compression: snapshots are written often and mostly repeat
    // themselves (field names, fingerprints), so even level 1 shrinks them
    // several times.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&json).map_err(|err| encode_error(err.to_string()))?;
    let compressed = encoder.finish().map_err(|err| encode_error(err.to_string()))?;
    let slot = slot_of(checkpoint.generation);
    let mut messages = Vec::with_capacity(compressed.len() / CHUNK_BYTES + 2);
    for (index, data) in compressed.chunks(CHUNK_BYTES).enumerate() {
        let mut value = Vec::with_capacity(CHUNK_HEADER_BYTES + data.len());
        value.extend_from_slice(CHUNK_MAGIC);
        value.extend_from_slice(&checkpoint.generation.to_be_bytes());
        value.extend_from_slice(data);
        messages.push(ChangelogMessage {
            key: partition.chunk_key(slot, index as u32),
            value,
        });
    }
    let manifest = Manifest {
        version: CHECKPOINT_FORMAT_VERSION,
        topic: partition.topic.clone(),
        partition: partition.partition,
        next_offset: checkpoint.next_offset,
        generation: checkpoint.generation,
        slot,
        chunks: messages.len() as u32,
        bytes: compressed.len() as u64,
        sha256: hex::encode(Sha256::digest(&compressed)),
        group_generation: checkpoint.group_generation,
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|err| encode_error(err.to_string()))?;
    // The slot's copy first: once the main manifest names this generation,
    // the previous generation's copy still names the other slot.
    messages.push(ChangelogMessage {
        key: partition.slot_manifest_key(slot),
        value: manifest_bytes.clone(),
    });
    messages.push(ChangelogMessage {
        key: partition.changelog_key(),
        value: manifest_bytes,
    });
    Ok(messages)
}

/// Puts checkpoints back together from changelog messages read in offset
/// order, keeping only the partitions asked for.
#[derive(Debug)]
pub struct CheckpointAssembler {
    wanted: HashSet<PartitionId>,
    /// Per partition: the main manifest (`None` slot) and each slot's copy.
    manifests: HashMap<(PartitionId, Option<u8>), Vec<u8>>,
    chunks: HashMap<(PartitionId, u8, u32), Vec<u8>>,
}

/// What a changelog key names.
enum ChangelogKey {
    Manifest(PartitionId, Option<u8>),
    Chunk(PartitionId, u8, u32),
}

/// A partition whose newest checkpoint could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreFallback {
    /// `previous_generation` when an older checkpoint was used instead,
    /// `empty_state` when none could be.
    pub reason: &'static str,
    /// Why each checkpoint tried was refused, newest first.
    pub detail: String,
}

/// What the changelog gave back for the wanted partitions.
#[derive(Debug, Default)]
pub struct Restored {
    pub checkpoints: BTreeMap<PartitionId, Checkpoint>,
    /// Partitions that have a manifest but whose newest checkpoint could
    /// not be used.
    pub fallbacks: BTreeMap<PartitionId, RestoreFallback>,
}

fn parse_changelog_key(key: &str) -> Option<ChangelogKey> {
    let mut parts = key.split('/');
    let topic = parts.next()?;
    let partition: i32 = parts.next()?.parse().ok()?;
    let id = PartitionId::new(topic, partition);
    match (parts.next(), parts.next(), parts.next()) {
        (None, None, None) => Some(ChangelogKey::Manifest(id, None)),
        (Some(slot), None, None) => Some(ChangelogKey::Manifest(id, Some(slot.parse().ok()?))),
        (Some(slot), Some(index), None) => Some(ChangelogKey::Chunk(id, slot.parse().ok()?, index.parse().ok()?)),
        _ => None,
    }
}

impl CheckpointAssembler {
    pub fn new(wanted: impl IntoIterator<Item = PartitionId>) -> CheckpointAssembler {
        CheckpointAssembler {
            wanted: wanted.into_iter().collect(),
            manifests: HashMap::new(),
            chunks: HashMap::new(),
        }
    }

    /// Takes one changelog message; a later message with the same key
    /// replaces an earlier one, and a tombstone (`None`) deletes it, as
    /// compaction would.
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Some(parsed) = std::str::from_utf8(key).ok().and_then(parse_changelog_key) else {
            return;
        };
        match parsed {
            ChangelogKey::Manifest(id, slot) if self.wanted.contains(&id) => match value {
                Some(value) => {
                    self.manifests.insert((id, slot), value.to_vec());
                }
                None => {
                    self.manifests.remove(&(id, slot));
                }
            },
            ChangelogKey::Chunk(id, slot, index) if self.wanted.contains(&id) => match value {
                Some(value) => {
                    self.chunks.insert((id, slot, index), value.to_vec());
                }
                None => {
                    self.chunks.remove(&(id, slot, index));
                }
            },
            _ => {}
        }
    }

    /// The newest usable checkpoint of each wanted partition that has one.
    /// A partition whose checkpoints are all unusable is left out and
    /// named in [`Restored::fallbacks`]: it starts with empty state, and
    /// the other partitions are not held back by it.
    pub fn finish(mut self) -> Restored {
        let mut by_partition: BTreeMap<PartitionId, Vec<Vec<u8>>> = BTreeMap::new();
        for ((id, _), bytes) in std::mem::take(&mut self.manifests) {
            by_partition.entry(id).or_default().push(bytes);
        }
        let mut restored = Restored::default();
        for (id, candidates) in by_partition {
            let mut refusals = Vec::new();
            let mut manifests = Vec::new();
            for bytes in candidates {
                match serde_json::from_slice::<Manifest>(&bytes) {
                    Ok(manifest) => manifests.push(manifest),
                    Err(err) => refusals.push(format!("bad manifest: {err}")),
                }
            }
            // The newest group generation first (a zombie's writes lose),
            // then the newest checkpoint; one try per generation.
            manifests.sort_by(|a, b| {
                (b.group_generation, b.generation, b.next_offset).cmp(&(
                    a.group_generation,
                    a.generation,
                    a.next_offset,
                ))
            });
            manifests.dedup_by(|later, earlier| {
                later.generation == earlier.generation && later.slot == earlier.slot && later.sha256 == earlier.sha256
            });
            let newest_generation = manifests.first().map(|manifest| manifest.generation);
            let mut chosen = None;
            for manifest in manifests {
                match self.assemble(&id, &manifest) {
                    Ok(checkpoint) => {
                        chosen = Some(checkpoint);
                        break;
                    }
                    Err(err) => refusals.push(format!("generation {}: {err}", manifest.generation)),
                }
            }
            match chosen {
                Some(checkpoint) => {
                    if !refusals.is_empty() || Some(checkpoint.generation) != newest_generation {
                        restored.fallbacks.insert(
                            id.clone(),
                            RestoreFallback {
                                reason: "previous_generation",
                                detail: refusals.join("; "),
                            },
                        );
                    }
                    restored.checkpoints.insert(id, checkpoint);
                }
                None => {
                    restored.fallbacks.insert(
                        id,
                        RestoreFallback {
                            reason: "empty_state",
                            detail: refusals.join("; "),
                        },
                    );
                }
            }
        }
        restored
    }

    fn assemble(&self, id: &PartitionId, manifest: &Manifest) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |detail: String| CheckpointError::Corrupt {
            partition: id.to_string(),
            detail,
        };
        if manifest.version != CHECKPOINT_FORMAT_VERSION {
            return Err(corrupt(format!(
                "manifest version {} is not supported",
                manifest.version
            )));
        }
        if manifest.topic != id.topic || manifest.partition != id.partition {
            return Err(corrupt("the manifest names another partition".into()));
        }
        // Sizes are checked before anything is allocated for them.
        if manifest.bytes > MAX_CHECKPOINT_BYTES {
            return Err(corrupt(format!(
                "declared size of {} bytes exceeds the limit of {MAX_CHECKPOINT_BYTES}",
                manifest.bytes
            )));
        }
        if u64::from(manifest.chunks) != manifest.bytes.div_ceil(CHUNK_BYTES as u64) {
            return Err(corrupt(format!(
                "{} chunks cannot hold {} bytes",
                manifest.chunks, manifest.bytes
            )));
        }
        let mut compressed = Vec::with_capacity(manifest.bytes as usize);
        for index in 0..manifest.chunks {
            let chunk = self.chunks.get(&(id.clone(), manifest.slot, index)).ok_or_else(|| {
                corrupt(format!(
                    "chunk {index} of generation {} is missing",
                    manifest.generation
                ))
            })?;
            if chunk.len() < CHUNK_HEADER_BYTES || &chunk[..4] != CHUNK_MAGIC {
                return Err(corrupt(format!("chunk {index} has no chunk header")));
            }
            let mut generation_bytes = [0u8; 8];
            generation_bytes.copy_from_slice(&chunk[4..CHUNK_HEADER_BYTES]);
            let generation = u64::from_be_bytes(generation_bytes);
            if generation != manifest.generation {
                return Err(corrupt(format!(
                    "chunk {index} belongs to generation {generation}, the manifest to {}",
                    manifest.generation
                )));
            }
            if (compressed.len() + chunk.len() - CHUNK_HEADER_BYTES) as u64 > manifest.bytes {
                return Err(corrupt("the chunks are longer than the manifest says".into()));
            }
            compressed.extend_from_slice(&chunk[CHUNK_HEADER_BYTES..]);
        }
        if compressed.len() as u64 != manifest.bytes || hex::encode(Sha256::digest(&compressed)) != manifest.sha256 {
            return Err(corrupt(
                "the chunks do not match the manifest's length and checksum".into(),
            ));
        }
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .take(MAX_SNAPSHOT_BYTES + 1)
            .read_to_end(&mut json)
            .map_err(|err| corrupt(format!("cannot decompress: {err}")))?;
        if json.len() as u64 > MAX_SNAPSHOT_BYTES {
            return Err(corrupt(format!(
                "inflates beyond the limit of {MAX_SNAPSHOT_BYTES} bytes"
            )));
        }
        let snapshot: EngineSnapshot =
            serde_json::from_slice(&json).map_err(|err| corrupt(format!("bad engine snapshot: {err}")))?;
        Ok(Checkpoint {
            partition: id.clone(),
            next_offset: manifest.next_offset,
            generation: manifest.generation,
            group_generation: manifest.group_generation,
            snapshot,
        })
    }
}

/// One partition in a snapshot file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionSnapshot {
    /// Offset of the first record the engine state has not seen.
    pub next_offset: i64,
    pub engine: EngineSnapshot,
}

/// A snapshot file: `{"<topic>/<partition>": {"next_offset": n, "engine": {...}}}`.
/// Written by `keywatch run --save-snapshot`, read by
/// `keywatch replay --from-kafka --snapshot`.
pub type SnapshotFile = BTreeMap<String, PartitionSnapshot>;

/// Writes a snapshot file, through a temporary file and a rename so a crash
/// never leaves half a file under the final name.
pub fn write_snapshot_file(path: &Path, snapshots: &SnapshotFile) -> Result<(), CheckpointError> {
    let write_error = |detail: String| CheckpointError::WriteFile {
        path: path.display().to_string(),
        detail,
    };
    let temporary = path.with_extension("json.tmp");
    // Private: a snapshot describes every key's places and habits.
    let file = crate::private_file::create_private(&temporary).map_err(|err| write_error(err.to_string()))?;
    let mut writer = std::io::BufWriter::new(file);
    serde_json::to_writer(&mut writer, snapshots).map_err(|err| write_error(err.to_string()))?;
    let file = writer.into_inner().map_err(|err| write_error(err.to_string()))?;
    file.sync_all().map_err(|err| write_error(err.to_string()))?;
    std::fs::rename(&temporary, path).map_err(|err| write_error(err.to_string()))
}

/// Reads a snapshot file and checks its keys.
pub fn read_snapshot_file(path: &Path) -> Result<BTreeMap<PartitionId, PartitionSnapshot>, CheckpointError> {
    let read_error = |detail: String| CheckpointError::ReadFile {
        path: path.display().to_string(),
        detail,
    };
    let file = std::fs::File::open(path).map_err(|err| read_error(err.to_string()))?;
    let raw: SnapshotFile =
        serde_json::from_reader(std::io::BufReader::new(file)).map_err(|err| read_error(err.to_string()))?;
    raw.into_iter()
        .map(|(key, snapshot)| {
            PartitionId::parse(&key)
                .map(|id| (id, snapshot))
                .ok_or_else(|| read_error(format!("key `{key}` is not `<topic>/<partition>`")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(partition: i32, next_offset: i64, generation: u64) -> Checkpoint {
        Checkpoint {
            partition: PartitionId::new("access", partition),
            next_offset,
            generation,
            group_generation: None,
            snapshot: EngineSnapshot::default(),
        }
    }

    fn push_all(assembler: &mut CheckpointAssembler, messages: &[ChangelogMessage]) {
        for message in messages {
            assembler.push(message.key.as_bytes(), Some(&message.value));
        }
    }

    #[test]
    fn partition_ids_round_trip_and_spread_over_the_changelog() {
        let id = PartitionId::new("access-logs.v2", 7);
        assert_eq!(id.changelog_key(), "access-logs.v2/7");
        assert_eq!(PartitionId::parse("access-logs.v2/7"), Some(id.clone()));
        assert_eq!(PartitionId::parse("a/b/1"), None);
        assert_eq!(PartitionId::parse("a/x"), None);
        assert_eq!(id.changelog_partition(3), 1);
        assert_eq!(id.changelog_partition(0), 0);
    }

    #[test]
    fn checkpoint_round_trips_through_changelog_messages() {
        let messages = encode_checkpoint(&checkpoint(2, 1234, 5)).unwrap();
        assert_eq!(messages.last().unwrap().key, "access/2", "manifest comes last");
        assert_eq!(messages[messages.len() - 2].key, "access/2/1", "then the slot's copy");
        assert!(
            messages[..messages.len() - 2]
                .iter()
                .all(|m| m.key.starts_with("access/2/1/"))
        );
        let mut assembler = CheckpointAssembler::new([PartitionId::new("access", 2)]);
        push_all(&mut assembler, &encode_checkpoint(&checkpoint(9, 1, 0)).unwrap());
        push_all(&mut assembler, &messages);
        let restored = assembler.finish();
        assert!(restored.fallbacks.is_empty());
        let restored = restored.checkpoints;
        assert_eq!(restored.len(), 1, "only wanted partitions");
        let restored = &restored[&PartitionId::new("access", 2)];
        assert_eq!((restored.next_offset, restored.generation), (1234, 5));
    }

    #[test]
    fn newest_manifest_wins_and_a_torn_write_keeps_the_previous_checkpoint() {
        let first = encode_checkpoint(&checkpoint(0, 100, 1)).unwrap();
        let second = encode_checkpoint(&checkpoint(0, 200, 2)).unwrap();
        let third = encode_checkpoint(&checkpoint(0, 300, 3)).unwrap();
        let mut assembler = CheckpointAssembler::new([PartitionId::new("access", 0)]);
        push_all(&mut assembler, &first);
        push_all(&mut assembler, &second);
        // The third checkpoint's chunks arrived but its manifests never did:
        // they overwrite slot 1, which generation 2 (slot 0) does not use.
        push_all(&mut assembler, &third[..third.len() - 2]);
        let restored = assembler.finish();
        assert_eq!(restored.checkpoints[&PartitionId::new("access", 0)].next_offset, 200);
        assert!(restored.fallbacks.is_empty(), "a torn write is not a fallback");
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_previous_generation() {
        let id = PartitionId::new("access", 0);
        let second = encode_checkpoint(&checkpoint(0, 200, 2)).unwrap();
        let mut third = encode_checkpoint(&checkpoint(0, 300, 3)).unwrap();
        third[0].value.truncate(CHUNK_HEADER_BYTES + 3);
        let mut assembler = CheckpointAssembler::new([id.clone()]);
        push_all(&mut assembler, &second);
        push_all(&mut assembler, &third);
        let restored = assembler.finish();
        assert_eq!(restored.checkpoints[&id].next_offset, 200);
        assert_eq!(restored.fallbacks[&id].reason, "previous_generation");
        assert!(
            restored.fallbacks[&id].detail.contains("generation 3"),
            "{:?}",
            restored.fallbacks
        );

        // A garbage main manifest: the slot copies still name both generations.
        let mut garbage = CheckpointAssembler::new([id.clone()]);
        push_all(&mut garbage, &second);
        push_all(&mut garbage, &encode_checkpoint(&checkpoint(0, 300, 3)).unwrap());
        garbage.push(b"access/0", Some(b"{not a manifest"));
        let restored = garbage.finish();
        assert_eq!(restored.checkpoints[&id].next_offset, 300);
        assert_eq!(
            restored.fallbacks[&id].reason, "previous_generation",
            "the damage is reported"
        );
    }

    #[test]
    fn nothing_usable_falls_back_to_empty_state_for_that_partition_alone() {
        let broken = PartitionId::new("access", 0);
        let healthy = PartitionId::new("access", 1);
        let mut assembler = CheckpointAssembler::new([broken.clone(), healthy.clone()]);
        assembler.push(b"access/0", Some(b"\x00\x01garbage"));
        push_all(&mut assembler, &encode_checkpoint(&checkpoint(1, 50, 1)).unwrap());
        let restored = assembler.finish();
        assert_eq!(restored.fallbacks[&broken].reason, "empty_state");
        assert!(!restored.checkpoints.contains_key(&broken));
        assert_eq!(
            restored.checkpoints[&healthy].next_offset, 50,
            "the other partition is restored"
        );
    }

    #[test]
    fn declared_sizes_are_checked_before_anything_is_allocated() {
        let id = PartitionId::new("access", 0);
        let messages = encode_checkpoint(&checkpoint(0, 100, 1)).unwrap();
        let mut manifest: Manifest = serde_json::from_slice(&messages.last().unwrap().value).unwrap();
        for (bytes, chunks) in [(u64::MAX, u32::MAX), (MAX_CHECKPOINT_BYTES + 1, 2049), (10, 7)] {
            manifest.bytes = bytes;
            manifest.chunks = chunks;
            let mut assembler = CheckpointAssembler::new([id.clone()]);
            assembler.push(b"access/0", Some(&serde_json::to_vec(&manifest).unwrap()));
            let restored = assembler.finish();
            assert_eq!(
                restored.fallbacks[&id].reason, "empty_state",
                "{bytes} bytes in {chunks} chunks"
            );
        }
    }

    #[test]
    fn a_snapshot_that_inflates_beyond_the_limit_is_refused() {
        // A gzip bomb: the check is the `take` before inflation, proven
        // here on the real limit's logic with a small stream.
        let zeros = vec![0u8; 1 << 20];
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&zeros).unwrap();
        let compressed = encoder.finish().unwrap();
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .take(1000 + 1)
            .read_to_end(&mut inflated)
            .unwrap();
        assert_eq!(inflated.len(), 1001, "inflation stops at the limit");
    }

    #[test]
    fn a_zombie_of_an_older_group_generation_loses_to_the_current_owner() {
        let id = PartitionId::new("access", 0);
        let mut owner = checkpoint(0, 200, 4);
        owner.group_generation = Some(8);
        let mut zombie = checkpoint(0, 150, 5);
        zombie.group_generation = Some(7);
        let mut assembler = CheckpointAssembler::new([id.clone()]);
        push_all(&mut assembler, &encode_checkpoint(&owner).unwrap());
        push_all(&mut assembler, &encode_checkpoint(&zombie).unwrap());
        let restored = assembler.finish();
        assert_eq!(
            restored.checkpoints[&id].next_offset, 200,
            "the zombie's later write is ignored"
        );
    }

    #[test]
    fn damaged_checkpoints_are_reported_not_used() {
        let messages = encode_checkpoint(&checkpoint(0, 100, 4)).unwrap();
        let mut missing_chunk = CheckpointAssembler::new([PartitionId::new("access", 0)]);
        missing_chunk.push(
            messages.last().unwrap().key.as_bytes(),
            Some(&messages.last().unwrap().value),
        );
        let err = missing_chunk.finish().fallbacks[&PartitionId::new("access", 0)]
            .detail
            .clone();
        assert!(err.contains("access/0") && err.contains("missing"), "{err}");

        let mut flipped = messages.clone();
        let last_byte = flipped[0].value.len() - 1;
        flipped[0].value[last_byte] ^= 0xff;
        let mut damaged = CheckpointAssembler::new([PartitionId::new("access", 0)]);
        push_all(&mut damaged, &flipped);
        let damaged = damaged.finish();
        assert!(
            damaged.fallbacks[&PartitionId::new("access", 0)]
                .detail
                .contains("checksum")
        );
        assert!(damaged.checkpoints.is_empty());

        let mut deleted = CheckpointAssembler::new([PartitionId::new("access", 0)]);
        push_all(&mut deleted, &messages);
        deleted.push(b"access/0", None);
        deleted.push(b"access/0/0", None);
        let deleted = deleted.finish();
        assert!(
            deleted.checkpoints.is_empty() && deleted.fallbacks.is_empty(),
            "tombstones delete the checkpoint"
        );
    }

    #[test]
    fn large_snapshots_are_split_into_chunks() {
        // Incompressible bytes stand in for a large snapshot's compressed form.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..CHUNK_BYTES * 2 + 10)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let slot = slot_of(7);
        let id = PartitionId::new("access", 1);
        let mut messages: Vec<ChangelogMessage> = noise
            .chunks(CHUNK_BYTES)
            .enumerate()
            .map(|(index, data)| {
                let mut value = CHUNK_MAGIC.to_vec();
                value.extend_from_slice(&7u64.to_be_bytes());
                value.extend_from_slice(data);
                ChangelogMessage {
                    key: id.chunk_key(slot, index as u32),
                    value,
                }
            })
            .collect();
        assert_eq!(messages.len(), 3);
        let manifest = Manifest {
            version: CHECKPOINT_FORMAT_VERSION,
            topic: "access".into(),
            partition: 1,
            next_offset: 9,
            generation: 7,
            slot,
            chunks: 3,
            bytes: noise.len() as u64,
            sha256: hex::encode(Sha256::digest(&noise)),
            group_generation: None,
        };
        messages.push(ChangelogMessage {
            key: id.changelog_key(),
            value: serde_json::to_vec(&manifest).unwrap(),
        });
        let mut assembler = CheckpointAssembler::new([id]);
        push_all(&mut assembler, &messages);
        // The chunks and checksum line up; only the payload is not gzip.
        let err = assembler.finish().fallbacks[&PartitionId::new("access", 1)]
            .detail
            .clone();
        assert!(err.contains("decompress"), "{err}");
    }

    #[test]
    fn snapshot_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.json");
        let mut file = SnapshotFile::new();
        file.insert(
            "access/3".into(),
            PartitionSnapshot {
                next_offset: 42,
                engine: EngineSnapshot::default(),
            },
        );
        write_snapshot_file(&path, &file).unwrap();
        let read = read_snapshot_file(&path).unwrap();
        assert_eq!(read[&PartitionId::new("access", 3)].next_offset, 42);
        let misnamed = SnapshotFile::from([("nope".to_string(), file["access/3"].clone())]);
        std::fs::write(&path, serde_json::to_vec(&misnamed).unwrap()).unwrap();
        assert!(read_snapshot_file(&path).unwrap_err().to_string().contains("nope"));
    }
}
