//! Where the cluster's files are, and writing them with the right permissions.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::ClusterError;

/// The files of `<data_dir>/cluster/` (see the module map in `cluster/mod.rs`).
#[derive(Debug, Clone)]
pub struct ClusterFiles {
    dir: PathBuf,
}

impl ClusterFiles {
    pub fn in_data_dir(data_dir: &Path) -> ClusterFiles {
        ClusterFiles {
            dir: data_dir.join("cluster"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn node_cert(&self) -> PathBuf {
        self.dir.join("node.pem")
    }
    pub fn node_key(&self) -> PathBuf {
        self.dir.join("node-key.pem")
    }
    pub fn revocations(&self) -> PathBuf {
        self.dir.join("revocations.pem")
    }
    pub fn tokens(&self) -> PathBuf {
        self.dir.join("tokens.json")
    }
    pub fn tokens_lock(&self) -> PathBuf {
        self.dir.join("tokens.lock")
    }
    pub fn ledger(&self) -> PathBuf {
        self.dir.join("ledger.json")
    }
    pub fn ca_server(&self) -> PathBuf {
        self.dir.join("ca-server")
    }
    pub fn session_static_key(&self) -> PathBuf {
        self.dir.join("session-static.key")
    }

    /// Whether this node has joined a cluster (or made one).
    pub fn is_member(&self) -> bool {
        self.ca_cert().exists() && self.node_cert().exists() && self.node_key().exists()
    }

    /// Whether this node holds the cluster CA.
    pub fn is_authority(&self) -> bool {
        self.ca_key().exists()
    }

    /// Creates the directory, readable by the owner only.
    pub fn create_dir(&self) -> Result<(), ClusterError> {
        std::fs::create_dir_all(&self.dir).map_err(file_error(&self.dir))?;
        crate::private_fs::private_dir(&self.dir).map_err(file_error(&self.dir))?;
        Ok(())
    }

    pub fn read(&self, path: &Path) -> Result<String, ClusterError> {
        std::fs::read_to_string(path).map_err(file_error(path))
    }

    /// Writes `content` to `path` readable by the owner only, replacing the file at once
    /// (a reader sees the old content or the new one, never half of it).
    pub fn write_private(&self, path: &Path, content: &str) -> Result<(), ClusterError> {
        use std::os::unix::fs::OpenOptionsExt;
        let temporary = path.with_extension("partial");
        let _ = std::fs::remove_file(&temporary);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| {
                file.write_all(content.as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, path));
        written.map_err(file_error(path))
    }
}

pub(crate) fn file_error(path: &Path) -> impl Fn(std::io::Error) -> ClusterError + '_ {
    move |error| ClusterError::File {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}
