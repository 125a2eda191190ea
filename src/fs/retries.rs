//! Retries of operations whose answer the link lost. A `mkdir`, `unlink`, `rename` or
//! exclusive `create` whose connection broke while it was out may or may not have been
//! done. The program hears EAGAIN and tries again; if the retry then meets "already
//! done" (EEXIST for a create, ENOENT for a removal) and the server shows the first
//! attempt's effect, the retry succeeds instead of failing wrongly.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::errno::{self, Errno, Op};
use crate::remote::{Remote, RemoteError};
use crate::sync::lock;

/// How long a lost answer stays on record: a retry within this time that meets "already
/// done" was the first attempt taking effect after all.
const REMEMBERED_FOR: Duration = Duration::from_secs(600);

/// One attempt of a non-idempotent operation, as its retry will be the same again.
pub(super) struct Attempt<'a> {
    op: Op,
    target: &'a str,
    /// What is moved or linked (rename, link).
    source: Option<&'a str>,
    /// What a symlink points to.
    link_to: Option<&'a str>,
}

impl<'a> Attempt<'a> {
    pub(super) fn new(op: Op, target: &'a str) -> Self {
        Attempt { op, target, source: None, link_to: None }
    }

    /// A rename or link of `source` to the target.
    pub(super) fn of(self, source: &'a str) -> Self {
        Attempt { source: Some(source), ..self }
    }

    /// A symlink pointing to `link_to`.
    pub(super) fn pointing_to(self, link_to: &'a str) -> Self {
        Attempt { link_to: Some(link_to), ..self }
    }

    /// Names the operation and its arguments: a retry is the same call.
    fn key(&self) -> String {
        format!("{:?}:{}\0{}\0{}", self.op, self.target, self.source.unwrap_or(""), self.link_to.unwrap_or(""))
    }

    /// What a retry meets when the first attempt took effect.
    fn already_done(&self) -> Errno {
        match self.op {
            Op::Unlink | Op::Rmdir | Op::Rename => Errno::ENOENT,
            _ => Errno::EEXIST,
        }
    }
}

/// Operations whose outcome the link swallowed, by key.
#[derive(Default)]
pub(super) struct Retries {
    lost: Mutex<HashMap<String, Instant>>,
}

impl Retries {
    /// Records that `attempt` may have taken effect although its answer was lost.
    pub(super) fn note_lost(&self, attempt: &Attempt<'_>) {
        let mut lost = lock(&self.lost);
        lost.retain(|_, at| at.elapsed() < REMEMBERED_FOR);
        lost.insert(attempt.key(), Instant::now());
    }

    /// Whether the same call as `attempt` recently lost its answer (and forgets it).
    pub(super) fn take_lost(&self, attempt: &Attempt<'_>) -> bool {
        lock(&self.lost).remove(&attempt.key()).is_some_and(|at| at.elapsed() < REMEMBERED_FOR)
    }

    /// The outcome of `attempt`, given what the server answered: a lost answer is
    /// recorded and reported as EAGAIN; a retry meeting "already done" after a lost
    /// answer succeeds if the server shows the effect.
    pub(super) async fn conclude<R: Remote>(
        &self,
        remote: &R,
        attempt: Attempt<'_>,
        answer: Result<(), RemoteError>,
    ) -> Result<(), Errno> {
        match answer {
            Ok(()) => {
                lock(&self.lost).remove(&attempt.key());
                Ok(())
            }
            Err(e) if e.outcome_unknown() => {
                self.note_lost(&attempt);
                Err(Errno::EAGAIN)
            }
            Err(e) => {
                let errno = errno::errno_for(remote, attempt.op, &e, attempt.target, attempt.source).await;
                if errno == attempt.already_done()
                    && self.take_lost(&attempt)
                    && took_effect(remote, attempt.op, attempt.target).await
                {
                    tracing::info!(op = ?attempt.op, target = attempt.target, "an earlier attempt had taken effect; the retry succeeds");
                    return Ok(());
                }
                Err(errno)
            }
        }
    }
}

/// Whether the effect of `op` on `target` is in place on the server.
async fn took_effect<R: Remote>(remote: &R, op: Op, target: &str) -> bool {
    let exists = remote.lstat(target).await.is_ok();
    match op {
        Op::Unlink | Op::Rmdir => !exists,
        _ => exists,
    }
}
