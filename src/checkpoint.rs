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

use crate::baseline::KeyState;
use crate::engine::EngineSnapshot;

/// Version of the manifest layout.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 1;
/// Version of the manifest of an incremental checkpoint, whose keys are in
/// entries of their own ([`encode_incremental`]). Builds that only know
/// version 1 refuse it, loudly, instead of restoring a partition without
/// its keys.
pub const INCREMENTAL_FORMAT_VERSION: u32 = 2;

/// Largest chunk of compressed snapshot in one message: well below the
/// 1 MiB default of `message.max.bytes` on brokers and producers.
pub const CHUNK_BYTES: usize = 512 * 1024;

/// Largest compressed checkpoint accepted from a manifest.
pub const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;
/// Largest snapshot a checkpoint may inflate to.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

const CHUNK_MAGIC: &[u8; 4] = b"KWC1";
const CHUNK_HEADER_BYTES: usize = 12;
/// Key entries: `KWK1`, the generation (8 bytes, big endian), then the key
/// state compressed as a zlib stream (gzip in entries written by earlier
/// builds; the reader takes both), or nothing for a key evicted.
const KEY_MAGIC: &[u8; 4] = b"KWK1";
/// Largest key entry, compressed or inflated.
pub const MAX_KEY_ENTRY_BYTES: u64 = 64 << 20;

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

    /// The changelog message key of one slot of a key's entry: the key's
    /// fingerprint bits in hex, never its id.
    fn key_entry_key(&self, bits: u128, slot: u8) -> String {
        format!("{self}/k/{bits:032x}/{slot}")
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
    /// Read from an incremental checkpoint (its keys from entries of their
    /// own); ignored when writing.
    pub incremental: bool,
}

impl Checkpoint {
    /// The checkpoint of `engine` as it is now, for the records of
    /// `partition` before `next_offset`. An incremental one carries only
    /// what the partition shares: its keys go in entries of their own
    /// ([`encode_incremental`]).
    pub fn of(
        engine: &crate::engine::Engine,
        partition: PartitionId,
        next_offset: i64,
        generation: u64,
        group_generation: Option<i32>,
        incremental: bool,
    ) -> Checkpoint {
        Checkpoint {
            partition,
            next_offset,
            generation,
            group_generation,
            snapshot: if incremental {
                engine.shared_snapshot()
            } else {
                engine.snapshot()
            },
            incremental,
        }
    }
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
    /// In an incremental checkpoint (version 2), the keys whose entries
    /// make up the state with the shared part in the chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeySetSummary>,
}

/// How many key entries an incremental checkpoint's state has and a
/// digest of them, so that a restore can tell a whole set from one that a
/// crash, a zombie or compaction damaged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySetSummary {
    pub count: u64,
    /// Hex XOR of the first 16 bytes of the SHA-256 of each live entry's
    /// message key and value.
    pub digest: String,
}

/// One message to write to the changelog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogMessage {
    pub key: String,
    pub value: Vec<u8>,
    /// A tombstone (null value), which compaction turns into nothing.
    pub tombstone: bool,
}

impl ChangelogMessage {
    fn new(key: String, value: Vec<u8>) -> ChangelogMessage {
        ChangelogMessage {
            key,
            value,
            tombstone: false,
        }
    }
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
        messages.push(ChangelogMessage::new(partition.chunk_key(slot, index as u32), value));
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
        keys: None,
    };
    push_manifest(&mut messages, partition, &manifest).map_err(|err| encode_error(err.to_string()))?;
    Ok(messages)
}

/// Appends a manifest, the slot's copy first: once the main manifest names
/// this generation, the previous generation's copy still names the other
/// slot.
fn push_manifest(
    messages: &mut Vec<ChangelogMessage>,
    partition: &PartitionId,
    manifest: &Manifest,
) -> Result<(), serde_json::Error> {
    let manifest_bytes = serde_json::to_vec(manifest)?;
    messages.push(ChangelogMessage::new(
        partition.slot_manifest_key(manifest.slot),
        manifest_bytes.clone(),
    ));
    messages.push(ChangelogMessage::new(partition.changelog_key(), manifest_bytes));
    Ok(())
}

/// What one slot of a key's entry holds, as the writer knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum SlotUse {
    #[default]
    Empty,
    /// The entry the newest checkpoint uses, with its digest.
    Live(u128),
    /// The marker of a key evicted: the newest checkpoint has no such key.
    Gone,
    /// An entry the newest checkpoint no longer uses but the previous one
    /// may: overwritten by the key's next write, never deleted before.
    Old,
    /// An entry no checkpoint worth restoring uses (written by a checkpoint
    /// that never finished, or belonging to refused state): deleted by the
    /// next checkpoint.
    Stale,
}

/// The two slots of one key's entry.
#[derive(Debug, Clone, Copy, Default)]
struct KeySlots {
    slots: [SlotUse; 2],
    /// The generation of the checkpoint that last wrote into them.
    written_in: Option<u64>,
}

impl KeySlots {
    /// The slot the newest checkpoint uses (live or gone).
    fn current(&self) -> Option<u8> {
        (0..2u8).find(|slot| matches!(self.slots[*slot as usize], SlotUse::Live(_) | SlotUse::Gone))
    }
}

/// Where each key's changelog entry lives, kept by the writer of a
/// partition's incremental checkpoints and rebuilt from the changelog on
/// restore. Each key has two slots: a write goes to the slot the newest
/// checkpoint does not use, so a crash in the middle of a checkpoint never
/// overwrites an entry the previous one needs; an evicted key gets a gone
/// marker, and its tombstones only once a later checkpoint no longer needs
/// the marker.
#[derive(Debug, Clone, Default)]
pub struct KeyLedger {
    keys: rustc_hash::FxHashMap<u128, KeySlots>,
    live: u64,
    digest: u128,
}

impl KeyLedger {
    /// Keys with a live entry.
    pub fn live_keys(&self) -> u64 {
        self.live
    }

    /// Keys whose entries are known (live, gone or waiting for deletion).
    pub fn known_keys(&self) -> usize {
        self.keys.len()
    }

    /// The state these entries describe is not used (its checkpoint was
    /// refused): every entry is deleted by the next checkpoint.
    pub fn forget_state(&mut self) {
        for slots in self.keys.values_mut() {
            for slot in &mut slots.slots {
                if *slot != SlotUse::Empty {
                    *slot = SlotUse::Stale;
                }
            }
        }
        self.live = 0;
        self.digest = 0;
    }

    fn summary(&self) -> KeySetSummary {
        KeySetSummary {
            count: self.live,
            digest: format!("{:032x}", self.digest),
        }
    }
}

fn entry_digest(key: &str, value: &[u8]) -> u128 {
    let mut hasher = Sha256::new();
    hasher.update(key.as_bytes());
    hasher.update(value);
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes)
}

/// Writes key entries with one compressor and one text buffer for all of
/// them: a compressor's state is hundreds of kilobytes, and making one per
/// key cost far more than compressing the key.
struct KeyEntryEncoder {
    compress: flate2::Compress,
    json: Vec<u8>,
}

impl KeyEntryEncoder {
    fn new() -> KeyEntryEncoder {
        KeyEntryEncoder {
            compress: flate2::Compress::new(flate2::Compression::fast(), true),
            json: Vec::new(),
        }
    }

    fn value(&mut self, generation: u64, state: Option<&KeyState>) -> Result<Vec<u8>, String> {
        let mut value = Vec::with_capacity(256);
        value.extend_from_slice(KEY_MAGIC);
        value.extend_from_slice(&generation.to_be_bytes());
        let Some(state) = state else {
            return Ok(value);
        };
        self.json.clear();
        serde_json::to_writer(&mut self.json, state).map_err(|err| err.to_string())?;
        self.compress.reset();
        value.reserve(self.json.len() / 2 + 64);
        loop {
            let read = self.compress.total_in() as usize;
            let status = self
                .compress
                .compress_vec(&self.json[read..], &mut value, flate2::FlushCompress::Finish)
                .map_err(|err| err.to_string())?;
            if status == flate2::Status::StreamEnd {
                return Ok(value);
            }
            // The output was full: give it room and go on.
            value.reserve(value.capacity().max(256));
        }
    }
}

/// The key state of an entry's compressed part: a zlib stream, or gzip as
/// earlier builds wrote it; at most `limit + 1` bytes are inflated.
fn inflate_key_entry(compressed: &[u8], limit: u64) -> std::io::Result<Vec<u8>> {
    let mut json = Vec::new();
    if compressed.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(compressed)
            .take(limit + 1)
            .read_to_end(&mut json)?;
    } else {
        flate2::read::ZlibDecoder::new(compressed)
            .take(limit + 1)
            .read_to_end(&mut json)?;
    }
    Ok(json)
}

/// Lays an incremental checkpoint out as changelog messages, in the order
/// they must be written: the entries of the keys in `changed` (their state,
/// or `None` for a key evicted), the deletions the ledger has waiting, then
/// the shared state (`checkpoint.snapshot`, whose `keys` are ignored) as
/// chunks, then the manifest. Updates `ledger` to what the messages leave
/// in the changelog once written.
pub fn encode_incremental(
    checkpoint: &Checkpoint,
    changed: &[(u128, Option<&KeyState>)],
    ledger: &mut KeyLedger,
) -> Result<Vec<ChangelogMessage>, CheckpointError> {
    let partition = &checkpoint.partition;
    let generation = checkpoint.generation;
    let encode_error = |detail: String| CheckpointError::Encode {
        partition: partition.to_string(),
        detail,
    };
    let mut messages = Vec::with_capacity(changed.len() + 4);
    let mut encoder = KeyEntryEncoder::new();
    for (bits, state) in changed {
        let slots = ledger.keys.entry(*bits).or_default();
        let current = slots.current();
        if state.is_none() && !matches!(current.map(|slot| slots.slots[slot as usize]), Some(SlotUse::Live(_))) {
            continue;
        }
        let target = current.map_or(0, |slot| 1 - slot);
        let key = partition.key_entry_key(*bits, target);
        let value = encoder.value(generation, *state).map_err(encode_error)?;
        if let Some(slot) = current {
            if let SlotUse::Live(digest) = slots.slots[slot as usize] {
                ledger.digest ^= digest;
                ledger.live -= 1;
            }
            slots.slots[slot as usize] = SlotUse::Old;
        }
        slots.slots[target as usize] = match state {
            Some(_) => {
                let digest = entry_digest(&key, &value);
                ledger.digest ^= digest;
                ledger.live += 1;
                SlotUse::Live(digest)
            }
            None => SlotUse::Gone,
        };
        slots.written_in = Some(generation);
        messages.push(ChangelogMessage::new(key, value));
    }
    // Deletions: entries of keys gone before this checkpoint (the previous
    // one, which needed the marker, is durable now) and stale entries.
    let mut deleted = Vec::new();
    for (bits, slots) in &mut ledger.keys {
        if slots.written_in == Some(generation) {
            continue;
        }
        let live = slots.slots.iter().any(|slot| matches!(slot, SlotUse::Live(_)));
        for slot in 0..2u8 {
            let delete = match slots.slots[slot as usize] {
                SlotUse::Empty => false,
                SlotUse::Stale => true,
                SlotUse::Live(_) => false,
                SlotUse::Gone | SlotUse::Old => !live,
            };
            if delete {
                slots.slots[slot as usize] = SlotUse::Empty;
                deleted.push((*bits, slot));
            }
        }
    }
    // In a fixed order: the set is the same whatever the map's order.
    deleted.sort_unstable();
    for (bits, slot) in deleted {
        messages.push(ChangelogMessage {
            key: partition.key_entry_key(bits, slot),
            value: Vec::new(),
            tombstone: true,
        });
    }
    ledger
        .keys
        .retain(|_, slots| slots.slots.iter().any(|slot| *slot != SlotUse::Empty));
    let mut shared = encode_checkpoint(checkpoint)?;
    // The shared part's own manifest is replaced by one naming the keys.
    shared.truncate(shared.len() - 2);
    let compressed: Vec<u8> = shared
        .iter()
        .flat_map(|chunk| chunk.value[CHUNK_HEADER_BYTES..].iter().copied())
        .collect();
    let manifest = Manifest {
        version: INCREMENTAL_FORMAT_VERSION,
        topic: partition.topic.clone(),
        partition: partition.partition,
        next_offset: checkpoint.next_offset,
        generation,
        slot: slot_of(generation),
        chunks: shared.len() as u32,
        bytes: compressed.len() as u64,
        sha256: hex::encode(Sha256::digest(&compressed)),
        group_generation: checkpoint.group_generation,
        keys: Some(ledger.summary()),
    };
    messages.extend(shared);
    push_manifest(&mut messages, partition, &manifest).map_err(|err| encode_error(err.to_string()))?;
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
    /// Per partition and key fingerprint bits: each slot's entry.
    key_entries: HashMap<PartitionId, KeyEntries>,
}

/// One partition's key entries read: by fingerprint bits, each slot's value.
type KeyEntries = BTreeMap<u128, [Option<Vec<u8>>; 2]>;

/// What a changelog key names.
enum ChangelogKey {
    Manifest(PartitionId, Option<u8>),
    Chunk(PartitionId, u8, u32),
    KeyEntry(PartitionId, u128, u8),
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
    /// Where the key entries of incremental checkpoints are, per partition
    /// that has any, for the next checkpoints to write around.
    pub ledgers: BTreeMap<PartitionId, KeyLedger>,
}

fn parse_changelog_key(key: &str) -> Option<ChangelogKey> {
    let mut parts = key.split('/');
    let topic = parts.next()?;
    let partition: i32 = parts.next()?.parse().ok()?;
    let id = PartitionId::new(topic, partition);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (None, None, None, None) => Some(ChangelogKey::Manifest(id, None)),
        (Some(slot), None, None, None) => Some(ChangelogKey::Manifest(id, Some(slot.parse().ok()?))),
        (Some(slot), Some(index), None, None) => Some(ChangelogKey::Chunk(id, slot.parse().ok()?, index.parse().ok()?)),
        (Some("k"), Some(bits), Some(slot), None) if bits.len() == 32 => {
            let slot: u8 = slot.parse().ok()?;
            (slot < 2).then_some(())?;
            Some(ChangelogKey::KeyEntry(id, u128::from_str_radix(bits, 16).ok()?, slot))
        }
        _ => None,
    }
}

impl CheckpointAssembler {
    pub fn new(wanted: impl IntoIterator<Item = PartitionId>) -> CheckpointAssembler {
        CheckpointAssembler {
            wanted: wanted.into_iter().collect(),
            manifests: HashMap::new(),
            chunks: HashMap::new(),
            key_entries: HashMap::new(),
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
            ChangelogKey::KeyEntry(id, bits, slot) if self.wanted.contains(&id) => {
                let entries = self.key_entries.entry(id).or_default();
                match value {
                    Some(value) => entries.entry(bits).or_default()[slot as usize] = Some(value.to_vec()),
                    None => {
                        if let Some(slots) = entries.get_mut(&bits) {
                            slots[slot as usize] = None;
                            if slots.iter().all(Option::is_none) {
                                entries.remove(&bits);
                            }
                        }
                    }
                }
            }
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
        let with_keys: Vec<PartitionId> = self
            .key_entries
            .keys()
            .filter(|id| !by_partition.contains_key(*id))
            .cloned()
            .collect();
        for id in with_keys {
            by_partition.insert(id, Vec::new());
        }
        for (id, candidates) in by_partition {
            let manifests_seen = !candidates.is_empty();
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
            let chosen_generation = chosen
                .as_ref()
                .filter(|checkpoint| checkpoint.incremental)
                .map(|checkpoint| checkpoint.generation);
            let ledger = self.ledger(&id, chosen_generation);
            if ledger.known_keys() > 0 {
                restored.ledgers.insert(id.clone(), ledger);
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
                None if manifests_seen => {
                    restored.fallbacks.insert(
                        id,
                        RestoreFallback {
                            reason: "empty_state",
                            detail: refusals.join("; "),
                        },
                    );
                }
                None => {}
            }
        }
        restored
    }

    fn assemble(&self, id: &PartitionId, manifest: &Manifest) -> Result<Checkpoint, CheckpointError> {
        let corrupt = |detail: String| CheckpointError::Corrupt {
            partition: id.to_string(),
            detail,
        };
        let incremental = match (manifest.version, &manifest.keys) {
            (CHECKPOINT_FORMAT_VERSION, None) => false,
            (INCREMENTAL_FORMAT_VERSION, Some(_)) => true,
            (INCREMENTAL_FORMAT_VERSION, None) => {
                return Err(corrupt("an incremental manifest without its key set".into()));
            }
            (version, _) => return Err(corrupt(format!("manifest version {version} is not supported"))),
        };
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
        let mut snapshot: EngineSnapshot =
            serde_json::from_slice(&json).map_err(|err| corrupt(format!("bad engine snapshot: {err}")))?;
        if let Some(summary) = &manifest.keys {
            snapshot.keys = self.assemble_keys(id, manifest.generation, summary, json.len() as u64)?;
        }
        Ok(Checkpoint {
            partition: id.clone(),
            next_offset: manifest.next_offset,
            generation: manifest.generation,
            group_generation: manifest.group_generation,
            snapshot,
            incremental,
        })
    }

    /// The key states of an incremental checkpoint of `generation`: per
    /// key, the newest entry not newer than the checkpoint, unless it marks
    /// the key gone; checked against the manifest's count and digest, in
    /// fingerprint order. `inflated` counts towards the snapshot limit.
    fn assemble_keys(
        &self,
        id: &PartitionId,
        generation: u64,
        summary: &KeySetSummary,
        mut inflated: u64,
    ) -> Result<Vec<KeyState>, CheckpointError> {
        let corrupt = |detail: String| CheckpointError::Corrupt {
            partition: id.to_string(),
            detail,
        };
        let mut keys = Vec::new();
        let mut digest = 0u128;
        if let Some(entries) = self.key_entries.get(id) {
            for (bits, slots) in entries {
                let Some((slot, value)) = newest_entry(slots, generation).map_err(&corrupt)? else {
                    continue;
                };
                if value.len() == CHUNK_HEADER_BYTES {
                    continue;
                }
                if value.len() as u64 > MAX_KEY_ENTRY_BYTES {
                    return Err(corrupt(format!("the entry of key {bits:032x} is too large")));
                }
                let json = inflate_key_entry(&value[CHUNK_HEADER_BYTES..], MAX_KEY_ENTRY_BYTES)
                    .map_err(|err| corrupt(format!("cannot decompress the entry of key {bits:032x}: {err}")))?;
                inflated += json.len() as u64;
                if json.len() as u64 > MAX_KEY_ENTRY_BYTES || inflated > MAX_SNAPSHOT_BYTES {
                    return Err(corrupt(format!(
                        "key entries inflate beyond the limit of {MAX_SNAPSHOT_BYTES} bytes"
                    )));
                }
                let state: KeyState = serde_json::from_slice(&json)
                    .map_err(|err| corrupt(format!("bad state in the entry of key {bits:032x}: {err}")))?;
                digest ^= entry_digest(&id.key_entry_key(*bits, slot), value);
                keys.push(state);
            }
        }
        if keys.len() as u64 != summary.count || format!("{digest:032x}") != summary.digest {
            return Err(corrupt(format!(
                "{} key entries do not match the manifest's {} and digest",
                keys.len(),
                summary.count
            )));
        }
        keys.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        Ok(keys)
    }

    /// Where a partition's key entries are, for writing after a restore of
    /// the incremental checkpoint of `generation` (`None`: no incremental
    /// state was restored, so every entry is stale).
    fn ledger(&self, id: &PartitionId, generation: Option<u64>) -> KeyLedger {
        let mut ledger = KeyLedger::default();
        let Some(entries) = self.key_entries.get(id) else {
            return ledger;
        };
        for (bits, slots) in entries {
            let mut uses = KeySlots::default();
            let current = generation.and_then(|generation| newest_entry(slots, generation).ok().flatten());
            for (slot, value) in slots.iter().enumerate() {
                let Some(value) = value else {
                    continue;
                };
                uses.slots[slot] = match current {
                    Some((current, _)) if current as usize == slot => {
                        if value.len() == CHUNK_HEADER_BYTES {
                            SlotUse::Gone
                        } else {
                            let digest = entry_digest(&id.key_entry_key(*bits, current), value);
                            ledger.digest ^= digest;
                            ledger.live += 1;
                            SlotUse::Live(digest)
                        }
                    }
                    Some(_) if entry_generation(value).is_some_and(|written| Some(written) <= generation) => {
                        SlotUse::Old
                    }
                    _ => SlotUse::Stale,
                };
            }
            ledger.keys.insert(*bits, uses);
        }
        ledger
    }
}

/// The generation in a key entry's header, if it has one.
fn entry_generation(value: &[u8]) -> Option<u64> {
    if value.len() < CHUNK_HEADER_BYTES || &value[..4] != KEY_MAGIC {
        return None;
    }
    let mut generation = [0u8; 8];
    generation.copy_from_slice(&value[4..CHUNK_HEADER_BYTES]);
    Some(u64::from_be_bytes(generation))
}

/// The newest of a key's two entries written no later than `generation`,
/// with its slot; an error when an entry has no valid header.
fn newest_entry(slots: &[Option<Vec<u8>>; 2], generation: u64) -> Result<Option<(u8, &[u8])>, String> {
    let mut newest: Option<(u64, u8, &[u8])> = None;
    for (slot, value) in slots.iter().enumerate() {
        let Some(value) = value else {
            continue;
        };
        let written = entry_generation(value).ok_or_else(|| format!("a key entry in slot {slot} has no header"))?;
        if written <= generation && newest.is_none_or(|(best, _, _)| written > best) {
            newest = Some((written, slot as u8, value));
        }
    }
    Ok(newest.map(|(_, slot, value)| (slot, value)))
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
            incremental: false,
        }
    }

    fn push_all(assembler: &mut CheckpointAssembler, messages: &[ChangelogMessage]) {
        for message in messages {
            assembler.push(message.key.as_bytes(), Some(&message.value));
        }
    }

    #[test]
    fn key_entries_read_back_from_zlib_and_from_the_gzip_of_earlier_builds() {
        let engine = {
            use crate::detect::testkit::{T0, event, ip, new_engine};
            let mut engine = new_engine();
            let mut out = Vec::new();
            engine.process(
                &[event(T0, "AKIAENTRYFORMAT00001", ip("london", 1), "/v1/orders", 200)],
                &mut out,
            );
            engine.release_held(&mut out);
            engine
        };
        let state = &engine.snapshot().keys[0];
        let json = serde_json::to_vec(state).unwrap();
        let mut encoder = KeyEntryEncoder::new();
        // Twice through one encoder: its reset leaves nothing of the first.
        for _ in 0..2 {
            let value = encoder.value(7, Some(state)).unwrap();
            assert_eq!(&value[..4], KEY_MAGIC);
            assert_eq!(value[4..CHUNK_HEADER_BYTES], 7u64.to_be_bytes());
            assert_eq!(
                inflate_key_entry(&value[CHUNK_HEADER_BYTES..], MAX_KEY_ENTRY_BYTES).unwrap(),
                json
            );
        }
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gzip, &json).unwrap();
        let gzip = gzip.finish().unwrap();
        assert_eq!(inflate_key_entry(&gzip, MAX_KEY_ENTRY_BYTES).unwrap(), json);
        // The limit holds for both: one byte past it is read, no more.
        let value = encoder.value(7, Some(state)).unwrap();
        let limit = 100;
        assert_eq!(
            inflate_key_entry(&value[CHUNK_HEADER_BYTES..], limit).unwrap().len() as u64,
            limit + 1
        );
        assert_eq!(inflate_key_entry(&gzip, limit).unwrap().len() as u64, limit + 1);
        assert_eq!(
            encoder.value(7, None).unwrap().len(),
            CHUNK_HEADER_BYTES,
            "a gone marker"
        );
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
                ChangelogMessage::new(id.chunk_key(slot, index as u32), value)
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
            keys: None,
        };
        messages.push(ChangelogMessage::new(
            id.changelog_key(),
            serde_json::to_vec(&manifest).unwrap(),
        ));
        let mut assembler = CheckpointAssembler::new([id]);
        push_all(&mut assembler, &messages);
        // The chunks and checksum line up; only the payload is not gzip.
        let err = assembler.finish().fallbacks[&PartitionId::new("access", 1)]
            .detail
            .clone();
        assert!(err.contains("decompress"), "{err}");
    }

    fn key(index: u32, events: u64) -> KeyState {
        let mut state = KeyState::new(format!("kf_test{index:04}").into(), "hint".into(), 1_000, 4);
        state.events = events;
        state
    }

    fn bits(index: u32) -> u128 {
        u128::from(index) + 1
    }

    /// Writes an incremental checkpoint of `generation` with these changes.
    fn incremental(
        generation: u64,
        changed: &[(u32, Option<&KeyState>)],
        ledger: &mut KeyLedger,
    ) -> Vec<ChangelogMessage> {
        let changed: Vec<(u128, Option<&KeyState>)> =
            changed.iter().map(|(index, state)| (bits(*index), *state)).collect();
        let mut checkpoint = checkpoint(0, 100 + generation as i64, generation);
        checkpoint.group_generation = Some(3);
        encode_incremental(&checkpoint, &changed, ledger).unwrap()
    }

    /// Pushes messages as a compacted topic would keep them.
    fn push_compacted(assembler: &mut CheckpointAssembler, messages: &[ChangelogMessage]) {
        for message in messages {
            let value = (!message.tombstone).then_some(message.value.as_slice());
            assembler.push(message.key.as_bytes(), value);
        }
    }

    fn restore(messages: &[&[ChangelogMessage]]) -> Restored {
        let mut assembler = CheckpointAssembler::new([PartitionId::new("access", 0)]);
        for batch in messages {
            push_compacted(&mut assembler, batch);
        }
        assembler.finish()
    }

    fn events_by_key(restored: &Restored) -> Vec<(String, u64)> {
        restored.checkpoints[&PartitionId::new("access", 0)]
            .snapshot
            .keys
            .iter()
            .map(|state| (state.fingerprint.to_string(), state.events))
            .collect()
    }

    #[test]
    fn incremental_checkpoints_write_only_changed_keys_and_restore_them_all() {
        let (a, b, c) = (key(1, 1), key(2, 1), key(3, 1));
        let mut ledger = KeyLedger::default();
        let first = incremental(0, &[(1, Some(&a)), (2, Some(&b)), (3, Some(&c))], &mut ledger);
        let b2 = key(2, 7);
        let second = incremental(1, &[(2, Some(&b2))], &mut ledger);
        let key_entries = |messages: &[ChangelogMessage]| messages.iter().filter(|m| m.key.contains("/k/")).count();
        assert_eq!(key_entries(&first), 3);
        assert_eq!(key_entries(&second), 1, "only the changed key is written");
        assert!(second.iter().all(|m| !m.key.contains("AKIA")));
        let restored = restore(&[&first, &second]);
        assert!(restored.fallbacks.is_empty(), "{:?}", restored.fallbacks);
        assert_eq!(
            events_by_key(&restored),
            vec![
                ("kf_test0001".to_string(), 1),
                ("kf_test0002".to_string(), 7),
                ("kf_test0003".to_string(), 1)
            ]
        );
        let checkpoint = &restored.checkpoints[&PartitionId::new("access", 0)];
        assert!(checkpoint.incremental);
        assert_eq!((checkpoint.generation, checkpoint.group_generation), (1, Some(3)));
        assert_eq!(restored.ledgers[&PartitionId::new("access", 0)].live_keys(), 3);
    }

    #[test]
    fn a_torn_incremental_checkpoint_restores_the_previous_one_and_its_leftovers_are_deleted() {
        let (a, b) = (key(1, 1), key(2, 1));
        let mut ledger = KeyLedger::default();
        let first = incremental(0, &[(1, Some(&a)), (2, Some(&b))], &mut ledger);
        let second = incremental(1, &[(1, Some(&key(1, 2))), (2, Some(&key(2, 2)))], &mut ledger);
        let third = incremental(2, &[(1, Some(&key(1, 3))), (4, Some(&key(4, 1)))], &mut ledger);
        // The third checkpoint's key entries were written, its manifests never.
        let torn: Vec<ChangelogMessage> = third.iter().filter(|m| m.key.contains("/k/")).cloned().collect();
        let restored = restore(&[&first, &second, &torn]);
        assert!(restored.fallbacks.is_empty(), "a torn write is not a fallback");
        assert_eq!(
            events_by_key(&restored),
            vec![("kf_test0001".to_string(), 2), ("kf_test0002".to_string(), 2)],
            "the second checkpoint's state, not the torn one's"
        );
        // Writing on from the restored ledger deletes the leftovers, so the
        // next checkpoint's state does not pick them up.
        let mut ledger = restored.ledgers[&PartitionId::new("access", 0)].clone();
        let again = incremental(2, &[(2, Some(&key(2, 3)))], &mut ledger);
        let tombstones: Vec<&str> = again.iter().filter(|m| m.tombstone).map(|m| m.key.as_str()).collect();
        assert_eq!(tombstones.len(), 2, "key 1's and key 4's torn entries: {tombstones:?}");
        let restored = restore(&[&first, &second, &torn, &again]);
        assert!(restored.fallbacks.is_empty(), "{:?}", restored.fallbacks);
        assert_eq!(
            events_by_key(&restored),
            vec![("kf_test0001".to_string(), 2), ("kf_test0002".to_string(), 3)]
        );
    }

    #[test]
    fn an_evicted_key_is_marked_gone_then_deleted_by_the_next_checkpoint() {
        let (a, b) = (key(1, 1), key(2, 1));
        let mut ledger = KeyLedger::default();
        let first = incremental(0, &[(1, Some(&a)), (2, Some(&b))], &mut ledger);
        let second = incremental(1, &[(2, None)], &mut ledger);
        assert!(
            second.iter().all(|m| !m.tombstone),
            "the previous checkpoint still needs b"
        );
        let restored = restore(&[&first, &second]);
        assert_eq!(events_by_key(&restored), vec![("kf_test0001".to_string(), 1)]);
        let third = incremental(2, &[], &mut ledger);
        let tombstones = third.iter().filter(|m| m.tombstone).count();
        assert_eq!(tombstones, 2, "both of b's slots");
        assert_eq!(ledger.known_keys(), 1);
        let restored = restore(&[&first, &second, &third]);
        assert!(restored.fallbacks.is_empty(), "{:?}", restored.fallbacks);
        assert_eq!(events_by_key(&restored), vec![("kf_test0001".to_string(), 1)]);
    }

    #[test]
    fn a_lost_key_entry_fails_the_digest_and_falls_back_to_the_previous_checkpoint() {
        let (a, b) = (key(1, 1), key(2, 1));
        let mut ledger = KeyLedger::default();
        let first = incremental(0, &[(1, Some(&a)), (2, Some(&b))], &mut ledger);
        let mut second = incremental(1, &[(1, Some(&key(1, 5)))], &mut ledger);
        // A zombie or a bit flip replaced key 1's new entry.
        let entry = second.iter_mut().find(|m| m.key.contains("/k/")).unwrap();
        let last = entry.value.len() - 1;
        entry.value[last] ^= 0x55;
        let restored = restore(&[&first, &second]);
        let fallback = &restored.fallbacks[&PartitionId::new("access", 0)];
        assert_eq!(fallback.reason, "previous_generation", "{fallback:?}");
        assert_eq!(
            events_by_key(&restored),
            vec![("kf_test0001".to_string(), 1), ("kf_test0002".to_string(), 1)]
        );
    }

    /// Bytes of the changelog messages of one checkpoint.
    fn changelog_bytes(messages: &[ChangelogMessage]) -> usize {
        messages
            .iter()
            .map(|message| message.key.len() + message.value.len())
            .sum()
    }

    /// The numbers in docs/OPERATIONS.md: 100,000 keys, 1% of them used in
    /// each batch; changelog bytes per checkpoint, whole partition against
    /// incremental. Run with
    /// `cargo test --lib checkpoint_bytes_per_batch -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: about a minute in a debug build"]
    fn checkpoint_bytes_per_batch_grow_with_the_keys_that_changed() {
        use crate::detect::testkit::{T0, event, ip, new_engine};
        const KEYS: usize = 100_000;
        const CHANGED: usize = KEYS / 100;
        let keys: Vec<String> = (0..KEYS).map(|index| format!("AKIAMEASURE{index:09}")).collect();
        let mut engine = new_engine();
        engine.track_changes();
        let mut out = Vec::new();
        let first: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(index, key)| event(T0 + index as i64, key, ip("london", 1), "/v1/orders", 200))
            .collect();
        engine.process(&first, &mut out);
        engine.release_held(&mut out);
        let id = PartitionId::new("access", 0);
        let mut ledger = KeyLedger::default();
        let checkpoint_of = |engine: &crate::engine::Engine, generation: u64, incremental: bool| {
            Checkpoint::of(engine, id.clone(), generation as i64, generation, Some(1), incremental)
        };
        let encode = |engine: &crate::engine::Engine, generation: u64, ledger: &mut KeyLedger| {
            let mut changed = Vec::new();
            engine.changed_keys(|bits, key| changed.push((bits, key)));
            encode_incremental(&checkpoint_of(engine, generation, true), &changed, ledger).unwrap()
        };
        let initial = encode(&engine, 0, &mut ledger);
        engine.clear_changes();
        println!(
            "first checkpoint, all {KEYS} keys: {} bytes incremental",
            changelog_bytes(&initial)
        );
        let (mut full_total, mut incremental_total) = (0, 0);
        let batches = 5u64;
        for batch in 1..=batches {
            let ts = T0 + batch as i64 * 600_000;
            let used: Vec<_> = keys
                .iter()
                .skip(batch as usize * CHANGED)
                .take(CHANGED)
                .map(|key| event(ts, key, ip("london", 2), "/v1/invoices", 200))
                .collect();
            engine.process(&used, &mut out);
            engine.release_held(&mut out);
            let full = changelog_bytes(&encode_checkpoint(&checkpoint_of(&engine, batch, false)).unwrap());
            let incremental = encode(&engine, batch, &mut ledger);
            let key_entries = incremental.iter().filter(|m| m.key.contains("/k/")).count();
            engine.clear_changes();
            assert_eq!(key_entries, CHANGED, "one entry per changed key");
            let incremental = changelog_bytes(&incremental);
            println!("batch {batch}: {CHANGED} keys changed: full {full} bytes, incremental {incremental} bytes");
            full_total += full;
            incremental_total += incremental;
        }
        println!(
            "mean per batch: full {} bytes, incremental {} bytes ({:.1}%)",
            full_total / batches as usize,
            incremental_total / batches as usize,
            100.0 * incremental_total as f64 / full_total as f64
        );
        assert!(
            incremental_total * 10 < full_total,
            "incremental {incremental_total} against full {full_total}"
        );
        let restored = restore_all(&id, &[&initial]);
        assert_eq!(restored.checkpoints[&id].snapshot.keys.len(), KEYS);
    }

    fn restore_all(id: &PartitionId, messages: &[&[ChangelogMessage]]) -> Restored {
        let mut assembler = CheckpointAssembler::new([id.clone()]);
        for batch in messages {
            push_compacted(&mut assembler, batch);
        }
        assembler.finish()
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
