//! Questions a login asks (a password, a passphrase, a code), put to the person at the
//! other end of the client's socket, and their answers read into wiped buffers.

use super::*;

/// Puts a login's questions to the client that asked for the mount or reconnect, which
/// asks its user on its terminal.
pub(super) struct SocketAsker {
    pub(super) asks: mpsc::UnboundedSender<(Question, oneshot::Sender<Option<Secret>>)>,
}

impl Asker for SocketAsker {
    fn ask<'a>(&'a self, q: Question) -> Pin<Box<dyn Future<Output = Option<Secret>> + Send + 'a>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.asks.send((q, reply)).ok()?;
            tokio::time::timeout(PERSON_DEADLINE, answer).await.ok()?.ok()?
        })
    }
}

/// The answer an `Answer` line carries (`None` inside: the user would not say); anything
/// else from the client is taken as no answer.
pub(super) fn answer_in(line: &[u8]) -> Option<Secret> {
    AnswerLine::parse(line).flatten().map(|typed| Secret::from(typed.into_inner()))
}
