//! One process per cache directory: an exclusive lock on `<dir>/LOCK`.
//!
//! sled 0.34 also locks its own database file, but its error ("could not acquire lock on
//! \"…/db\": Os { code: 11, … }") names neither the setting nor the holder. This lock is taken
//! first, with `File::try_lock` (never blocks), records the holder's PID, and is released
//! when the database is closed (or by the kernel when the process dies, even by kill -9).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cache_core::{CacheError, Result};

use crate::NAME;

/// Name of the lock file inside the cache directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// A held directory lock; released on drop.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist), or fails at once naming the directory.
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let io_err = |what: &str, e: std::io::Error| {
            CacheError::backend(
                NAME,
                "open",
                false,
                format!("{what} {}: {e}", path.display()),
            )
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err("cannot open lock file", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let by = if holder.is_empty() {
                    "another process".to_owned()
                } else {
                    format!("another process ({holder})")
                };
                return Err(CacheError::backend(
                    NAME,
                    "open",
                    false,
                    format!(
                        "disk cache directory {} is in use by {by}: a disk cache directory \
                         belongs to one process at a time; give each process its own \
                         disk_cache_dir, or share a cache between processes with type: redis",
                        dir.display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(io_err("cannot lock", e)),
        }
        // Best effort: record who holds it, for the message above.
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| write!(file, "pid {}", std::process::id()))
            .and_then(|()| file.flush());
        Ok(DirLock { _file: file, path })
    }

    /// Path of the lock file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
