//! Files only their owner may read (mode 0600), for every output keywatch
//! writes: alerts name keys and places, rejected records hold parts of raw
//! input, snapshots describe every key's habits.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Creates (or truncates) `path` for writing with mode 0600. A file that
/// already existed keeps its inode and so its mode, which is therefore set
/// again explicitly.
pub fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Writes `bytes` to a private file (see [`create_private`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = create_private(path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_existing_world_readable_file_is_tightened_and_truncated() {
        let dir = std::env::temp_dir().join(format!("keywatch-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("out.json");
        std::fs::write(&path, b"old contents").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, b"new").expect("written");
        let mode = std::fs::metadata(&path).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).expect("readable"), b"new");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
