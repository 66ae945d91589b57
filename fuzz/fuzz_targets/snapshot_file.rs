//! Fuzzes `read_snapshot_file` (the file `keywatch replay --snapshot`
//! reads) on arbitrary bytes: every outcome must be the snapshots or a
//! `CheckpointError`, never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use keywatch::checkpoint::read_snapshot_file;
use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, rewritten for each input; in memory
/// (`/dev/shm`) where there is one, since a disk makes this target slow.
static PATH: LazyLock<PathBuf> = LazyLock::new(|| {
    let shm = PathBuf::from("/dev/shm");
    let dir = if shm.is_dir() { shm } else { std::env::temp_dir() };
    dir.join(format!("keywatch-fuzz-snapshot-{}.json", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    std::fs::write(&*PATH, data).expect("the fuzzing temp file is writable");
    if let Ok(snapshots) = read_snapshot_file(&PATH) {
        for id in snapshots.keys() {
            assert!(!id.to_string().is_empty());
        }
    }
});
