//! The agent's links and the mounts that hold them. Mounts of one destination share a
//! working link; a link that failed for good is not shared again, but stays with the
//! mounts that hold it (`moor reconnect` may still bring it back) until the last of them
//! lets it go. Links are told apart by identity, never by destination: a new link to a
//! destination whose old one failed must not be counted down by the old one's mounts.

use std::sync::Arc;

/// Generic over the destination and the link, so that the counting can be tested
/// without a server.
pub struct Links<D, L> {
    held: Vec<Held<D, L>>,
}

struct Held<D, L> {
    dest: D,
    link: Arc<L>,
    /// Mounts holding it; never 0 (the entry goes with its last mount).
    users: usize,
}

impl<D, L> Default for Links<D, L> {
    fn default() -> Self {
        Links { held: Vec::new() }
    }
}

impl<D: PartialEq, L> Links<D, L> {
    /// A link to `dest` that mounts hold already and that `usable` accepts, now held by
    /// one more mount. The newest such link, should two mounts have connected at once.
    pub fn share(&mut self, dest: &D, usable: impl Fn(&L) -> bool) -> Option<Arc<L>> {
        let h = self.held.iter_mut().rev().find(|h| h.dest == *dest && usable(&h.link))?;
        h.users += 1;
        Some(h.link.clone())
    }

    /// A link just connected to `dest`, held by the one mount that connected it.
    pub fn add(&mut self, dest: D, link: Arc<L>) {
        self.held.push(Held { dest, link, users: 1 });
    }

    /// One mount fewer holds `link`. True when that was the last one: the caller closes
    /// it. A link not held here (already let go) is left alone.
    pub fn release(&mut self, link: &Arc<L>) -> bool {
        let Some(i) = self.held.iter().position(|h| Arc::ptr_eq(&h.link, link)) else {
            return false;
        };
        self.held[i].users -= 1;
        if self.held[i].users > 0 {
            return false;
        }
        self.held.remove(i);
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A link that works until it is failed.
    #[derive(Default)]
    struct FakeLink {
        failed: AtomicBool,
    }

    fn usable(l: &FakeLink) -> bool {
        !l.failed.load(Ordering::SeqCst)
    }

    #[test]
    fn mounts_of_one_destination_share_its_link_and_the_last_one_closes_it() {
        let mut links = Links::default();
        assert!(links.share(&"host", usable).is_none(), "nothing to share yet");
        let a = Arc::new(FakeLink::default());
        links.add("host", a.clone());
        let b = links.share(&"host", usable).expect("a working link is shared");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(links.share(&"other", usable).is_none(), "another destination has its own");
        assert!(!links.release(&a), "one mount still holds it");
        assert!(links.release(&b), "the last mount closes it");
        assert_eq!(links.len(), 0);
        assert!(!links.release(&a), "a link let go is not counted again");
    }

    /// Issue 20, point 4: mount A's link fails for good, mount B gets a new one; A's
    /// unmount closes A's link, not B's.
    #[test]
    fn a_failed_link_stays_with_its_mounts_and_never_counts_down_its_replacement() {
        let mut links = Links::default();
        let old = Arc::new(FakeLink::default());
        links.add("host", old.clone());
        old.failed.store(true, Ordering::SeqCst);
        assert!(links.share(&"host", usable).is_none(), "a failed link is not shared");
        let new = Arc::new(FakeLink::default());
        links.add("host", new.clone());
        assert_eq!(links.len(), 2, "the failed link is still held by mount A");
        let c = links.share(&"host", usable).expect("the new link is shared");
        assert!(Arc::ptr_eq(&c, &new));

        assert!(links.release(&old), "A's unmount closes the failed link");
        assert!(!links.release(&new), "B and C still hold the new one");
        assert!(links.release(&new));
        assert_eq!(links.len(), 0);
    }

    #[test]
    fn two_mounts_connecting_at_once_each_keep_their_own_link() {
        let mut links = Links::default();
        let first = Arc::new(FakeLink::default());
        let second = Arc::new(FakeLink::default());
        links.add("host", first.clone());
        links.add("host", second.clone());
        let shared = links.share(&"host", usable).unwrap();
        assert!(Arc::ptr_eq(&shared, &second), "the newest is shared");
        assert!(links.release(&first), "the first mount's link is its alone");
        assert!(!links.release(&second));
        assert!(links.release(&second));
    }
}
