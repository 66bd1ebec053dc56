//! Directories and files only the agent's user may read: the data directory holds the
//! cluster key and tokens, the database holds blueprint environments.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of a private directory.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a private file.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` (and missing parents) as 0700, or tightens it to 0700 if it exists
/// with access for group or others. Returns whether it had to be tightened.
pub fn private_dir(path: &Path) -> std::io::Result<bool> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)?;
    tighten(path, DIR_MODE)
}

/// Tightens `path` and everything below it: directories to 0700, files to 0600. Returns
/// how many entries were looser than that.
pub fn private_tree(path: &Path) -> std::io::Result<usize> {
    let mut loosened = 0;
    let mode = if path.is_dir() { DIR_MODE } else { FILE_MODE };
    loosened += usize::from(tighten(path, mode)?);
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            loosened += private_tree(&entry?.path())?;
        }
    }
    Ok(loosened)
}

/// Writes a newly generated secret (and a newline) into a file that must not exist yet,
/// readable by its owner only from the start, and flushed to disk.
pub fn write_new_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

fn tighten(path: &Path, mode: u32) -> std::io::Result<bool> {
    // Never follow a link planted in the tree to chmod something outside it.
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.file_type().is_symlink() || metadata.permissions().mode() & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn creates_private_and_tightens_loose_entries() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data/nested");
        assert!(!private_dir(&data).unwrap());
        assert_eq!(mode(&data), 0o700);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(private_dir(&data).unwrap());
        assert_eq!(mode(&data), 0o700);

        let file = data.join("db");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(private_tree(&data).unwrap(), 2);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(private_tree(&data).unwrap(), 0);
    }
}
