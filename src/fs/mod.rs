//! The filesystem: a plain async core (`fs`) over the remote, and the kernel adapter
//! (`fuse`) over the core.

pub mod buffers;
pub mod cache;
pub mod errno;
#[allow(clippy::module_inception)]
pub mod fs;
pub mod fuse;
pub mod handle;
pub mod inode;
pub mod prefetch;
pub mod removals;
pub mod smallfiles;
pub mod writeback;

pub use fs::Fs;
