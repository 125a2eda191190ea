//! moor: mount a remote directory over SSH/SFTP and keep it mounted through bad networks.
//!
//! Layers, top to bottom: `cli` → `control` (agent, socket protocol) → `fs` (FUSE adapter
//! over a plain async core) → `remote` (the remote filesystem; all of SFTP, sessions
//! included) → `link` (SSH transport: connections, their pool and health). A layer
//! uses only layers below it, never one above; the modules beside them here are below
//! every layer. `scripts/layers` checks this, and that no module circle exists.

mod cli;
mod control;
mod deadline;
mod fs;
mod link;
mod logging;
mod offline_cache;
mod process;
mod remote;
mod sync;
mod timestamp;

fn main() {
    std::process::exit(cli::run());
}
