//! Single-flight: concurrent identical misses make one upstream call.
//!
//! The first request for a key becomes the leader and calls upstream; requests for the same key
//! that arrive meanwhile wait (bounded) for the leader's result. A leader that fails, or is
//! dropped (client gone), wakes its followers with nothing: they try again, one of them becoming
//! the new leader. A failed leader therefore never hands its error to anyone else.
//!
//! A leader whose backend read found the entry (the lease attempt that is also the lookup)
//! hands that on as a hit ([`Leader::publish_hit`]): its followers answer from it, each with its
//! own `max-age` check, as hits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::cache::Hit;

#[derive(Clone, Debug)]
pub(crate) enum State {
    Pending,
    Done(Bytes),
    Hit(Box<Hit>),
    Failed,
}

type Map = Arc<Mutex<HashMap<String, watch::Receiver<State>>>>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: Map,
}

/// Held by the leader; publishing or dropping it releases the followers.
#[derive(Debug)]
pub(crate) struct Leader {
    key: String,
    tx: watch::Sender<State>,
    map: Map,
}

impl Leader {
    /// Hands the result to the followers.
    pub(crate) fn publish(self, body: Bytes) {
        let _ = self.tx.send(State::Done(body));
    }

    /// Hands the entry the leader's backend read found to its followers.
    pub(crate) fn publish_hit(self, hit: Hit) {
        let _ = self.tx.send(State::Hit(Box::new(hit)));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if matches!(*self.tx.borrow(), State::Pending) {
            let _ = self.tx.send(State::Failed);
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // Only remove our own flight (a new leader may already have replaced it).
        if map
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

pub(crate) enum Join {
    /// Call upstream, then publish.
    Lead(Leader),
    /// Wait for the leader.
    Follow(watch::Receiver<State>),
}

pub(crate) enum Waited {
    /// The leader's result.
    Done(Bytes),
    /// The entry the leader's backend read found.
    Hit(Box<Hit>),
    /// The leader failed or vanished: try again.
    Retry,
    /// Waited too long: go upstream alone.
    TimedOut,
}

impl Flights {
    pub(crate) fn join(&self, key: &str) -> Join {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key)
            && matches!(*rx.borrow(), State::Pending)
        {
            return Join::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(State::Pending);
        map.insert(key.to_owned(), rx);
        Join::Lead(Leader {
            key: key.to_owned(),
            tx,
            map: self.map.clone(),
        })
    }

    pub(crate) async fn wait(mut rx: watch::Receiver<State>, timeout: Duration) -> Waited {
        let waited =
            tokio::time::timeout(timeout, rx.wait_for(|s| !matches!(s, State::Pending))).await;
        match waited {
            Err(_) => Waited::TimedOut,
            Ok(Err(_)) => Waited::Retry,
            Ok(Ok(state)) => match &*state {
                State::Done(b) => Waited::Done(b.clone()),
                State::Hit(h) => Waited::Hit(h.clone()),
                _ => Waited::Retry,
            },
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
