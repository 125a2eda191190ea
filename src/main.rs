//! moor: mount a remote directory over SSH/SFTP and keep it mounted through bad networks.
//!
//! Layers, each using only the one below it: `cli` → `control` (agent, socket protocol)
//! → `fs` (FUSE adapter over a plain async core) → `remote` (SFTP operations) → `link`
//! (SSH transport).

mod cli;
mod control;
mod deadline;
mod fs;
mod link;
mod logging;
mod process;
mod remote;
mod sync;
mod timestamp;

fn main() {
    std::process::exit(cli::run());
}
