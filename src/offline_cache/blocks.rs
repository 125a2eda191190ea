//! The offline cache's block files: one file per block, named by its number, made
//! whole in `tmp/` and renamed into `blocks/`, so that a block file is either absent or
//! complete as written. A checksum kept in the index is checked on every read: a file
//! torn by a power loss, or changed by anyone, is never served.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Block files are spread over this many subdirectories, so none grows huge.
const FANOUT: u64 = 64;

/// What the directories of a cache take on disk at most: `blocks/`, `tmp/`, the cache's
/// own and the subdirectories of `blocks/`, a filesystem block each.
pub(super) const DIRECTORIES: u64 = (FANOUT + 3) * 4096;

/// Where the blocks of one cache live.
#[derive(Debug, Clone)]
pub(super) struct BlockFiles {
    root: PathBuf,
}

/// What a block's bytes sum to: stored with it in the index, checked when it is read.
pub(super) fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Makes `dir` and its parents private to the user (0700).
pub(super) fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

impl BlockFiles {
    /// The block files under `root`, making the directories they need.
    pub(super) fn open(root: &Path) -> io::Result<BlockFiles> {
        let files = BlockFiles { root: root.to_path_buf() };
        private_dir(&files.root.join("tmp"))?;
        private_dir(&files.root.join("blocks"))?;
        Ok(files)
    }

    pub(super) fn path(&self, id: u64) -> PathBuf {
        self.root.join("blocks").join(format!("{:02x}", id % FANOUT)).join(id.to_string())
    }

    fn temp_path(&self, id: u64) -> PathBuf {
        self.root.join("tmp").join(id.to_string())
    }

    /// Writes block `id` in `tmp/`, not yet visible as a block (see `publish`).
    pub(super) fn write_temp(&self, id: u64, data: &[u8]) -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.temp_path(id))?;
        f.write_all(data)
    }

    /// Moves block `id` from `tmp/` to its place. No fsync: a block cut short by a power
    /// loss fails its checksum and is read as missing.
    pub(super) fn publish(&self, id: u64) -> io::Result<()> {
        let to = self.path(id);
        if let Some(dir) = to.parent() {
            private_dir(dir)?;
        }
        fs::rename(self.temp_path(id), to)
    }

    /// Block `id`, if its file is there and sums to `crc` at length `len`.
    pub(super) fn read(&self, id: u64, len: u64, crc: u32) -> Option<Vec<u8>> {
        let data = fs::read(self.path(id)).ok()?;
        (data.len() as u64 == len && checksum(&data) == crc).then_some(data)
    }

    /// Removes block `id` wherever it is (published or not).
    pub(super) fn remove(&self, id: u64) {
        let _ = fs::remove_file(self.path(id));
        let _ = fs::remove_file(self.temp_path(id));
    }

    /// Removes what an earlier run left in `tmp/`: blocks written but never published.
    /// At most one per reader that was filling the cache then.
    pub(super) fn clear_temp(&self) -> io::Result<()> {
        for e in fs::read_dir(self.root.join("tmp"))? {
            let _ = fs::remove_file(e?.path());
        }
        Ok(())
    }
}
