//! What each command does, one file per command.

mod mount;
mod status;
mod unmount;

pub(super) use mount::*;
pub(super) use status::*;
pub(super) use unmount::*;
