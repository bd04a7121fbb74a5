//! Pages being loaded right now (from the page store or the backend), so
//! that concurrent misses on one page (kernel readahead, parallel readers,
//! read-ahead) wait for a single load.
//!
//! A load is registered before it starts: read-ahead registers every page
//! of a multi-page backend request at once, so a reader that catches up
//! with it waits for that request instead of fetching its page again.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

use super::ReadError;
use crate::cache::PageKey;

type Outcome = Option<Result<Bytes, ReadError>>;

#[derive(Default)]
pub struct InFlight(parking_lot::Mutex<HashMap<PageKey, watch::Receiver<Outcome>>>);

/// Either the right (and duty) to load a page, or a place to wait for
/// whoever has it.
pub(super) enum Claim {
    Load(Loader),
    Wait(Waiter),
}

/// The one loader of a page. Dropped without [`Loader::deliver`] (an error
/// path, a cancelled request), it withdraws, and waiters load the page
/// themselves.
pub(super) struct Loader {
    key: PageKey,
    tx: watch::Sender<Outcome>,
    /// What the map holds for this load (to tell it from a later one).
    registered: watch::Receiver<Outcome>,
    inflight: Arc<InFlight>,
}

pub(super) struct Waiter(watch::Receiver<Outcome>);

impl InFlight {
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    pub(super) fn contains(&self, key: &PageKey) -> bool {
        self.0.lock().contains_key(key)
    }

    /// Load `key` (nobody is) or wait for its loader.
    pub(super) fn claim(self: &Arc<Self>, key: &PageKey) -> Claim {
        let mut map = self.0.lock();
        if let Some(rx) = map.get(key) {
            return Claim::Wait(Waiter(rx.clone()));
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx.clone());
        Claim::Load(Loader {
            key: key.clone(),
            tx,
            registered: rx,
            inflight: Arc::clone(self),
        })
    }

    /// Load `key` if nobody is; `None` if someone is.
    pub(super) fn try_load(self: &Arc<Self>, key: &PageKey) -> Option<Loader> {
        match self.claim(key) {
            Claim::Load(loader) => Some(loader),
            Claim::Wait(_) => None,
        }
    }

    /// Forget `key`'s load if it is still `registered` (not a later one).
    fn remove(&self, key: &PageKey, registered: &watch::Receiver<Outcome>) {
        let mut map = self.0.lock();
        if map.get(key).is_some_and(|rx| rx.same_channel(registered)) {
            map.remove(key);
        }
    }
}

impl Loader {
    pub(super) fn key(&self) -> &PageKey {
        &self.key
    }

    /// Hand the result to every waiter. The load stays registered (new
    /// readers get this result at once) until [`Loader::finish`] or drop:
    /// a fetched page stays registered until it is stored, so a reader
    /// that misses it in memory meanwhile does not fetch it again.
    pub(super) fn deliver(&self, result: Result<Bytes, ReadError>) {
        self.tx.send_replace(Some(result));
    }

    /// The load is over: later readers look in memory and the page store.
    pub(super) fn finish(self) {
        drop(self);
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.inflight.remove(&self.key, &self.registered);
    }
}

impl Waiter {
    /// The loader's result; `None` if it withdrew without one (then load
    /// the page yourself: claim again).
    pub(super) async fn result(mut self) -> Option<Result<Bytes, ReadError>> {
        loop {
            if let Some(result) = self.0.borrow_and_update().as_ref() {
                return Some(result.clone());
            }
            if self.0.changed().await.is_err() {
                return self.0.borrow().clone();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u64) -> PageKey {
        PageKey {
            source: "file:///srv".into(),
            path: "f".into(),
            version: "v1".into(),
            index,
        }
    }

    #[tokio::test]
    async fn waiters_get_the_loader_s_result_and_a_withdrawn_load_can_be_claimed_again() {
        let inflight = Arc::new(InFlight::default());
        let Claim::Load(loader) = inflight.claim(&key(0)) else {
            panic!("nobody loads yet");
        };
        let Claim::Wait(waiter) = inflight.claim(&key(0)) else {
            panic!("the first claim loads");
        };
        let waiting = tokio::spawn(waiter.result());
        loader.deliver(Ok(Bytes::from_static(b"page")));
        let got = waiting.await.unwrap().unwrap().ok().unwrap();
        assert_eq!(&got[..], b"page");
        assert_eq!(inflight.len(), 1, "registered until finished");
        loader.finish();
        assert_eq!(inflight.len(), 0);

        let withdrawn = inflight.try_load(&key(1)).unwrap();
        let Claim::Wait(waiter) = inflight.claim(&key(1)) else {
            panic!("claimed");
        };
        drop(withdrawn);
        assert!(
            waiter.result().await.is_none(),
            "no result from a withdrawn load"
        );
        assert!(inflight.try_load(&key(1)).is_some(), "claimable again");
    }
}
