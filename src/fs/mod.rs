//! The filesystem: a plain async core (`coordinator`) over the remote, and the kernel
//! adapter (`fuse`) over the core. Each concern of the core has its own module, which
//! owns its state and background tasks: write-behind, read-ahead, small files, listing
//! ahead, retries of lost answers; `coordinator` coordinates them.

mod buffers;
mod coordinator;
mod errno;
mod error;
mod fuse;
mod handles;
mod interrupt;
mod list_ahead;
mod listing;
mod meta;
mod owners;
mod path;
mod read_ahead;
mod retries;
mod small_files;
mod tasks;
mod write_behind;

#[cfg(test)]
mod tests;

pub use coordinator::{Fs, FsOptions};
pub use fuse::{AdapterOptions, FuseAdapter, KernelNotifier, KernelTimeouts};
pub use owners::{IdMap, Owners};
