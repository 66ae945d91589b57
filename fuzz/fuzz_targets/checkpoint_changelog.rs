//! Fuzzes the checkpoint reader: `CheckpointAssembler::push` over arbitrary
//! changelog messages, then `finish`. Every outcome must be a checkpoint or
//! a `CheckpointError`, never a panic, an abort or an allocation the input
//! merely declared.
//!
//! The first byte picks what the rest of the input is, so the fuzzer reaches
//! past the checksum that random messages never pass:
//! - 0: a sequence of messages, each `key length (1 byte), key, value length
//!   (2 bytes, big endian; 0xFFFF is a tombstone), value`;
//! - 1: the compressed snapshot of partition `access/0`, cut into chunks and
//!   given a manifest that matches it (the gzip and JSON layers on arbitrary
//!   bytes);
//! - 2: the snapshot JSON of `access/0`, compressed and laid out as a
//!   writer would (the engine snapshot's deserialisation on arbitrary text).
#![no_main]

use std::io::Write;

use keywatch::checkpoint::{CHECKPOINT_FORMAT_VERSION, CHUNK_BYTES, CheckpointAssembler, PartitionId};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fn wanted() -> [PartitionId; 2] {
    [PartitionId::new("access", 0), PartitionId::new("access", 1)]
}

/// Messages framed as mode 0 describes; a truncated tail is dropped.
fn framed_messages(mut data: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut messages = Vec::new();
    loop {
        let Some((&key_len, rest)) = data.split_first() else {
            break;
        };
        if rest.len() < key_len as usize + 2 {
            break;
        }
        let (key, rest) = rest.split_at(key_len as usize);
        let value_len = u16::from_be_bytes([rest[0], rest[1]]);
        let rest = &rest[2..];
        if value_len == u16::MAX {
            messages.push((key.to_vec(), None));
            data = rest;
            continue;
        }
        if rest.len() < value_len as usize {
            break;
        }
        let (value, rest) = rest.split_at(value_len as usize);
        messages.push((key.to_vec(), Some(value.to_vec())));
        data = rest;
    }
    messages
}

/// The messages a writer lays out for `compressed` as generation 3 of
/// `access/0` (slot 1): chunks, then the manifest.
fn checkpoint_messages(compressed: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let generation: u64 = 3;
    let slot = (generation % 2) as u8;
    let mut messages = Vec::new();
    for (index, data) in compressed.chunks(CHUNK_BYTES).enumerate() {
        let mut value = b"KWC1".to_vec();
        value.extend_from_slice(&generation.to_be_bytes());
        value.extend_from_slice(data);
        messages.push((format!("access/0/{slot}/{index}").into_bytes(), Some(value)));
    }
    let manifest = serde_json::json!({
        "version": CHECKPOINT_FORMAT_VERSION,
        "topic": "access",
        "partition": 0,
        "next_offset": 42,
        "generation": generation,
        "slot": slot,
        "chunks": messages.len(),
        "bytes": compressed.len(),
        "sha256": hex::encode(Sha256::digest(compressed)),
    });
    messages.push((b"access/0".to_vec(), Some(manifest.to_string().into_bytes())));
    messages
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("writing to a vector cannot fail");
    encoder.finish().expect("writing to a vector cannot fail")
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let messages = match mode % 3 {
        0 => framed_messages(rest),
        1 => checkpoint_messages(rest),
        _ => checkpoint_messages(&gzip(rest)),
    };
    let mut assembler = CheckpointAssembler::new(wanted());
    for (key, value) in &messages {
        assembler.push(key, value.as_deref());
    }
    // Whatever the bytes, restoring never fails as a whole (a partition
    // whose checkpoint cannot be read falls back alone, to an older
    // generation or to empty state), and nothing comes back for a partition
    // nobody asked for.
    let restored = assembler.finish();
    let wanted = wanted();
    assert!(
        restored.checkpoints.keys().all(|id| wanted.contains(id)),
        "a checkpoint of a partition nobody asked for came back"
    );
    assert!(
        restored.fallbacks.keys().all(|id| wanted.contains(id)),
        "a fallback for a partition nobody asked for came back"
    );
    for (id, fallback) in &restored.fallbacks {
        // An older generation comes back restored; no usable one, empty.
        let expected = if restored.checkpoints.contains_key(id) {
            "previous_generation"
        } else {
            "empty_state"
        };
        assert_eq!(fallback.reason, expected, "the fallback of {id:?} names the wrong state");
    }
});
