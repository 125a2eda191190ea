//! Dialing a link's connections, at most `MAX_CONCURRENT_DIALS` at once across every
//! destination, and retiring the ones no longer used.

use super::*;

/// Ends connections that are no longer used, without waiting on a dead network. Each is
/// aborted first: nothing it was given may reach the server after this (see
/// `Conn::abort`), since what it did not confirm is sent again on a new connection.
pub(super) fn retire<S: Session>(pool: Vec<Arc<Conn<S>>>) {
    for conn in pool {
        conn.abort();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
        });
    }
}

pub(super) async fn dial_one<S: Session>(
    dest: &Destination,
    generation: u64,
    keyring: &Keyring,
    asker: Option<&dyn Asker>,
    index: usize,
) -> Result<Conn<S>, LinkError> {
    // A dial that may wait for a person does not hold back other mounts' dials.
    let _permit = if asker.is_none() { Some(DIALS.acquire().await) } else { None };
    let mut c = ssh::connect(dest, generation, keyring, asker).await?;
    c.index = index;
    Ok(c)
}

/// Dials the whole pool at once; fails (closing what did connect) if any dial fails.
/// Only the first connection may ask a person; the others log in with what it learned
/// (they wait for it if they needed to ask), and when every login needs a one-time code
/// the pool is that one connection.
pub(super) async fn dial_pool<S: Session>(
    dest: &Destination,
    opts: &LinkOptions,
    generation: u64,
    keyring: &Keyring,
    asker: Option<&dyn Asker>,
) -> Result<Vec<Arc<Conn<S>>>, LinkError> {
    let dial = |index, asker| dial_one(dest, generation, keyring, asker, index);
    let (first, others) = futures_util::future::join(
        dial(0, asker),
        futures_util::future::join_all((1..opts.connections.max(1)).map(|index| dial(index, None))),
    )
    .await;
    let first_ok = first.is_ok();
    let mut results = vec![first];
    for (index, r) in (1..).zip(others) {
        match r {
            // It needed what the first connection asked a person for: now kept.
            Err(LinkError::NeedsLogin { .. }) if first_ok && !keyring.needs_person() => {
                results.push(dial(index, None).await)
            }
            Err(LinkError::NeedsLogin { .. }) if first_ok => {
                tracing::info!(connection = index, "every login needs a one-time code: this mount keeps one connection")
            }
            r => results.push(r),
        }
    }
    let mut pool = Vec::with_capacity(results.len());
    let mut first_err = None;
    for r in results {
        match r {
            Ok(c) => pool.push(Arc::new(c)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        for c in pool {
            c.close().await;
        }
        return Err(e);
    }
    Ok(pool)
}
