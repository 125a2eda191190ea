//! The control plane: the per-user agent that owns mounts, the socket protocol the CLI
//! uses to steer it, how mounts are named, and where their files live.

pub mod agent;
pub mod client;
pub mod lines;
pub mod links;
pub mod mount;
pub mod names;
pub mod paths;
pub mod protocol;
pub mod registry;
pub mod status;
pub mod systemd;
