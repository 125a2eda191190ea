//! The fs core against the in-memory remote: no kernel, no network. One file per
//! concern, as the code is split, with the harness in `harness.rs`.

mod attrs;
mod cancel;
mod data;
mod harness;
mod list_ahead;
mod model;
mod namespace;
mod outage;
mod read_only;
mod readdir;
mod retries;
mod small_files;
mod unlink;
mod write_behind;

use harness::*;
