//! A per-test temporary directory for certificates, configs, logs, captures
//! and key logs. Removed on drop unless `HSMON_KEEP_TMP` is set.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A temporary directory owned by one test.
#[derive(Debug)]
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl WorkDir {
    /// Creates `/tmp/hsmt-NAME-XXXXXX` (or under `$TMPDIR`).
    pub fn new(name: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hsmt-{name}-"))
            .tempdir()
            .context("creating the test's temporary directory")?;
        let path = dir.path().to_path_buf();
        let keep = std::env::var_os("HSMON_KEEP_TMP").is_some_and(|v| !v.is_empty());
        let dir = if keep {
            eprintln!("HSMON_KEEP_TMP: keeping {}", path.display());
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        Ok(Self { dir, path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether the directory is removed on drop.
    pub fn removed_on_drop(&self) -> bool {
        self.dir.is_some()
    }
}
