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
//!   count, length and SHA-256 of the compressed snapshot;
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
    };
    messages.push(ChangelogMessage {
        key: partition.changelog_key(),
        value: serde_json::to_vec(&manifest).map_err(|err| encode_error(err.to_string()))?,
    });
    Ok(messages)
}

/// Puts checkpoints back together from changelog messages read in offset
/// order, keeping only the partitions asked for.
#[derive(Debug)]
pub struct CheckpointAssembler {
    wanted: HashSet<PartitionId>,
    manifests: HashMap<PartitionId, Vec<u8>>,
    chunks: HashMap<(PartitionId, u8, u32), Vec<u8>>,
}

/// What a changelog key names.
enum ChangelogKey {
    Manifest(PartitionId),
    Chunk(PartitionId, u8, u32),
}

fn parse_changelog_key(key: &str) -> Option<ChangelogKey> {
    let mut parts = key.split('/');
    let topic = parts.next()?;
    let partition: i32 = parts.next()?.parse().ok()?;
    let id = PartitionId::new(topic, partition);
    match (parts.next(), parts.next(), parts.next()) {
        (None, None, None) => Some(ChangelogKey::Manifest(id)),
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
            ChangelogKey::Manifest(id) if self.wanted.contains(&id) => match value {
                Some(value) => {
                    self.manifests.insert(id, value.to_vec());
                }
                None => {
                    self.manifests.remove(&id);
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

    /// The checkpoint of each wanted partition that has one.
    pub fn finish(mut self) -> Result<BTreeMap<PartitionId, Checkpoint>, CheckpointError> {
        let mut checkpoints = BTreeMap::new();
        let manifests = std::mem::take(&mut self.manifests);
        for (id, manifest_bytes) in manifests {
            let checkpoint = self.assemble(&id, &manifest_bytes)?;
            checkpoints.insert(id, checkpoint);
        }
        Ok(checkpoints)
    }

    fn assemble(&mut self, id: &PartitionId, manifest_bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |detail: String| CheckpointError::Corrupt {
            partition: id.to_string(),
            detail,
        };
        let manifest: Manifest =
            serde_json::from_slice(manifest_bytes).map_err(|err| corrupt(format!("bad manifest: {err}")))?;
        if manifest.version != CHECKPOINT_FORMAT_VERSION {
            return Err(corrupt(format!(
                "manifest version {} is not supported",
                manifest.version
            )));
        }
        let mut compressed = Vec::with_capacity(manifest.bytes as usize);
        for index in 0..manifest.chunks {
            let chunk = self.chunks.remove(&(id.clone(), manifest.slot, index)).ok_or_else(|| {
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
            compressed.extend_from_slice(&chunk[CHUNK_HEADER_BYTES..]);
        }
        if compressed.len() as u64 != manifest.bytes || hex::encode(Sha256::digest(&compressed)) != manifest.sha256 {
            return Err(corrupt(
                "the chunks do not match the manifest's length and checksum".into(),
            ));
        }
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(compressed.as_slice())
            .read_to_end(&mut json)
            .map_err(|err| corrupt(format!("cannot decompress: {err}")))?;
        let snapshot: EngineSnapshot =
            serde_json::from_slice(&json).map_err(|err| corrupt(format!("bad engine snapshot: {err}")))?;
        Ok(Checkpoint {
            partition: id.clone(),
            next_offset: manifest.next_offset,
            generation: manifest.generation,
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
        assert!(
            messages[..messages.len() - 1]
                .iter()
                .all(|m| m.key.starts_with("access/2/1/"))
        );
        let mut assembler = CheckpointAssembler::new([PartitionId::new("access", 2)]);
        push_all(&mut assembler, &encode_checkpoint(&checkpoint(9, 1, 0)).unwrap());
        push_all(&mut assembler, &messages);
        let restored = assembler.finish().unwrap();
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
        // The third checkpoint's chunks arrived but its manifest never did:
        // they overwrite slot 1, which generation 2 (slot 0) does not use.
        push_all(&mut assembler, &third[..third.len() - 1]);
        let restored = assembler.finish().unwrap();
        assert_eq!(restored[&PartitionId::new("access", 0)].next_offset, 200);
    }

    #[test]
    fn damaged_checkpoints_are_reported_not_used() {
        let messages = encode_checkpoint(&checkpoint(0, 100, 4)).unwrap();
        let mut missing_chunk = CheckpointAssembler::new([PartitionId::new("access", 0)]);
        missing_chunk.push(
            messages.last().unwrap().key.as_bytes(),
            Some(&messages.last().unwrap().value),
        );
        let err = missing_chunk.finish().unwrap_err().to_string();
        assert!(err.contains("access/0") && err.contains("missing"), "{err}");

        let mut flipped = messages.clone();
        let last_byte = flipped[0].value.len() - 1;
        flipped[0].value[last_byte] ^= 0xff;
        let mut damaged = CheckpointAssembler::new([PartitionId::new("access", 0)]);
        push_all(&mut damaged, &flipped);
        assert!(damaged.finish().unwrap_err().to_string().contains("checksum"));

        let mut deleted = CheckpointAssembler::new([PartitionId::new("access", 0)]);
        push_all(&mut deleted, &messages);
        deleted.push(b"access/0", None);
        assert!(
            deleted.finish().unwrap().is_empty(),
            "a tombstone deletes the checkpoint"
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
        };
        messages.push(ChangelogMessage {
            key: id.changelog_key(),
            value: serde_json::to_vec(&manifest).unwrap(),
        });
        let mut assembler = CheckpointAssembler::new([id]);
        push_all(&mut assembler, &messages);
        // The chunks and checksum line up; only the payload is not gzip.
        let err = assembler.finish().unwrap_err().to_string();
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
