//! The control plane: the per-user agent that owns mounts, the socket protocol the CLI
//! uses to steer it, and where their files live.

pub mod agent;
pub mod client;
pub mod mount;
pub mod paths;
pub mod protocol;
pub mod registry;
pub mod status;
