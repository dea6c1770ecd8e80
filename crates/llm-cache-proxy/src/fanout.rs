//! Fan-out of one in-flight upstream stream to every identical streaming request.
//!
//! The first streaming miss for a key (the leader) registers a [`Flight`] and starts a driver
//! task that makes the upstream call, appends each chunk to the flight's buffer as it arrives,
//! and stores the assembled response when the stream ends cleanly. Every client of the flight,
//! the leader's included, is a [`Subscriber`] that replays the buffer from the first byte
//! and then follows it live: a request that arrives mid-stream gets the whole stream, byte for
//! byte what the upstream sent, without a second upstream call.
//!
//! * The driver runs on its own, so a client that disconnects does not cut the others off. When
//!   the last client is gone the driver is aborted (the upstream connection closes, as it would
//!   without fan-out) and nothing is stored.
//! * An upstream that fails before streaming (a non-2xx, unreachable) is the leader's answer,
//!   passed through verbatim; the other clients make their own calls, as with the non-streaming
//!   single-flight (a failed leader never poisons its followers).
//! * A stream that fails midway fails every client at the same point, as it would have failed
//!   each of them; it is not stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::upstream::UpstreamError;

/// The in-flight streams, by cache key.
#[derive(Debug, Default)]
pub struct StreamFlights {
    map: Mutex<HashMap<String, Arc<Flight>>>,
}

/// What [`StreamFlights::join`] made of the caller.
#[derive(Debug)]
pub enum Join {
    /// No stream in flight: the caller leads. It must call [`Leader::start`].
    Lead(Leader),
    /// A stream is in flight: the caller follows it.
    Follow(Subscriber),
}

/// Where a flight is.
#[derive(Debug)]
enum Phase {
    /// The upstream call is being made.
    Starting,
    /// Chunks are arriving.
    Streaming,
    /// The stream ended cleanly.
    Done,
    /// The upstream refused before streaming. The leader takes the error; followers retry.
    StartFailed(Option<UpstreamError>),
    /// The stream broke midway, or every client left.
    Failed,
}

#[derive(Debug)]
struct State {
    chunks: Vec<Bytes>,
    phase: Phase,
    subscribers: usize,
    driver: Option<AbortHandle>,
}

/// One upstream stream shared by its clients.
#[derive(Debug)]
pub struct Flight {
    key: String,
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StreamFlights {
    /// Leads a new flight for `key`, or follows the one in flight.
    pub fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(key) {
            return Join::Follow(Subscriber::new(flight.clone()));
        }
        let flight = Arc::new(Flight {
            key: key.to_owned(),
            state: Mutex::new(State {
                chunks: Vec::new(),
                phase: Phase::Starting,
                subscribers: 0,
                driver: None,
            }),
            changed: watch::Sender::new(()),
        });
        map.insert(key.to_owned(), flight.clone());
        Join::Lead(Leader {
            flights: self.clone(),
            subscriber: Some(Subscriber::new(flight)),
        })
    }

    /// Streams in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no stream is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends `flight`: settles its phase, takes it out of the map (so the next request leads
    /// a new one or finds the stored entry) and wakes its clients.
    fn end(&self, flight: &Arc<Flight>, settle: impl FnOnce(Phase) -> Phase) {
        {
            let mut st = lock(&flight.state);
            st.phase = settle(std::mem::replace(&mut st.phase, Phase::Failed));
            st.driver = None;
        }
        {
            let mut map = lock(&self.map);
            if map.get(&flight.key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
                map.remove(&flight.key);
            }
        }
        flight.changed.send_replace(());
    }
}

/// The first client of a flight.
#[derive(Debug)]
pub struct Leader {
    flights: Arc<StreamFlights>,
    /// Taken by [`Leader::start`]; still here on drop = never started.
    subscriber: Option<Subscriber>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Dropped before it started the upstream call (its request went away): end the flight,
        // or followers would wait for a stream that never comes. They make their own calls.
        if let Some(sub) = self.subscriber.take() {
            self.flights.end(&sub.flight, |_| Phase::StartFailed(None));
        }
    }
}

/// What the driver does with the chunks of a flight besides buffering them: each chunk in
/// order, then [`ChunkSink::finish`] once at a clean end (to store the assembled response).
pub trait ChunkSink: Send + 'static {
    /// A chunk, in order.
    fn chunk(&mut self, chunk: &Bytes);
    /// The stream ended cleanly.
    fn finish(&mut self);
}

impl Leader {
    /// Starts the driver: `open` makes the upstream call and returns its byte stream. Resolves
    /// when the upstream has answered: `Ok` with the leader's own client stream, or the
    /// upstream's error (only the leader sees it; followers make their own calls).
    ///
    /// # Errors
    /// The upstream's refusal before streaming.
    pub async fn start<F>(
        mut self,
        open: F,
        sink: Box<dyn ChunkSink>,
    ) -> Result<Subscriber, UpstreamError>
    where
        F: Future<Output = Result<BoxStream<'static, reqwest::Result<Bytes>>, UpstreamError>>
            + Send
            + 'static,
    {
        let mut sub = self.subscriber.take().expect("a leader starts once");
        let flight = sub.flight.clone();
        let task = tokio::spawn(drive(self.flights.clone(), flight.clone(), open, sink));
        // Dropping the leader's subscriber (its client left) aborts the driver through this
        // handle when no follower is listening either.
        lock(&flight.state).driver = Some(task.abort_handle());
        // No deadline here: the upstream call's own timeouts end the driver.
        match sub.started(true).await {
            Ok(()) => Ok(sub),
            Err(e) => Err(e.unwrap_or_else(|| UpstreamError::Unreachable {
                message: "the upstream stream was abandoned before it started".to_owned(),
                timeout: false,
            })),
        }
    }
}

/// Ends a flight when its driver ends, however it ends (including an abort).
struct DriverGuard {
    flights: Arc<StreamFlights>,
    flight: Arc<Flight>,
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.flights.end(&self.flight, |phase| match phase {
            Phase::Starting => Phase::StartFailed(None),
            Phase::Streaming => Phase::Failed,
            settled => settled,
        });
    }
}

async fn drive<F>(
    flights: Arc<StreamFlights>,
    flight: Arc<Flight>,
    open: F,
    mut sink: Box<dyn ChunkSink>,
) where
    F: Future<Output = Result<BoxStream<'static, reqwest::Result<Bytes>>, UpstreamError>>,
{
    let _guard = DriverGuard {
        flights,
        flight: flight.clone(),
    };
    let mut upstream = match open.await {
        Ok(s) => s,
        Err(e) => {
            lock(&flight.state).phase = Phase::StartFailed(Some(e));
            return; // the guard ends the flight
        }
    };
    lock(&flight.state).phase = Phase::Streaming;
    flight.changed.send_replace(());
    while let Some(item) = upstream.next().await {
        match item {
            Ok(chunk) => {
                sink.chunk(&chunk);
                lock(&flight.state).chunks.push(chunk);
                flight.changed.send_replace(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "upstream stream failed; not cached");
                return; // the guard marks the flight failed
            }
        }
    }
    // Store before the guard ends the flight, so a request after it finds the entry.
    sink.finish();
    lock(&flight.state).phase = Phase::Done;
}

/// One client of a flight: replays the buffered chunks, then follows the live stream.
#[derive(Debug)]
pub struct Subscriber {
    flight: Arc<Flight>,
    rx: watch::Receiver<()>,
    next: usize,
    finished: bool,
}

impl Subscriber {
    fn new(flight: Arc<Flight>) -> Self {
        lock(&flight.state).subscribers += 1;
        let rx = flight.changed.subscribe();
        Subscriber {
            flight,
            rx,
            next: 0,
            finished: false,
        }
    }

    /// Waits until the upstream has answered (bounded by `timeout` for a follower). `false`:
    /// no stream to follow (the upstream refused, or the wait timed out): make your own call.
    pub async fn wait_started(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.started(false)).await,
            Ok(Ok(()))
        )
    }

    /// Waits for the upstream's answer: `Err` with its refusal (taken only by the leader).
    async fn started(&mut self, take_error: bool) -> Result<(), Option<UpstreamError>> {
        loop {
            {
                let mut st = lock(&self.flight.state);
                match &mut st.phase {
                    Phase::Starting => {}
                    Phase::StartFailed(e) => return Err(if take_error { e.take() } else { None }),
                    _ => return Ok(()),
                }
                self.rx.mark_unchanged();
            }
            // The sender lives in the flight, which this subscriber holds: never closed.
            let _ = self.rx.changed().await;
        }
    }

    /// The client's byte stream: every chunk from the first, then the live ones, then the end
    /// (or an error where the upstream stream broke).
    pub fn into_stream(self) -> BoxStream<'static, std::io::Result<Bytes>> {
        futures::stream::unfold(self, |mut sub| async move {
            loop {
                if sub.finished {
                    return None;
                }
                {
                    let st = lock(&sub.flight.state);
                    if let Some(chunk) = st.chunks.get(sub.next) {
                        let chunk = chunk.clone();
                        drop(st);
                        sub.next += 1;
                        return Some((Ok(chunk), sub));
                    }
                    match st.phase {
                        Phase::Done => return None,
                        Phase::Failed | Phase::StartFailed(_) => {
                            drop(st);
                            sub.finished = true;
                            return Some((
                                Err(std::io::Error::other("the upstream stream failed")),
                                sub,
                            ));
                        }
                        Phase::Starting | Phase::Streaming => {}
                    }
                    sub.rx.mark_unchanged();
                }
                // The sender lives in the flight, which this subscriber holds: never closed.
                let _ = sub.rx.changed().await;
            }
        })
        .boxed()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let mut st = lock(&self.flight.state);
        st.subscribers -= 1;
        if st.subscribers == 0
            && matches!(st.phase, Phase::Starting | Phase::Streaming)
            && let Some(driver) = st.driver.take()
        {
            drop(st);
            // Nobody is listening: stop reading the upstream (nothing is stored); the driver's
            // guard ends the flight.
            driver.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(n: usize) -> BoxStream<'static, reqwest::Result<Bytes>> {
        futures::stream::iter((0..n).map(|i| Ok(Bytes::from(format!("chunk {i}\n")))))
            .then(|c| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                c
            })
            .boxed()
    }

    struct Count(Arc<Mutex<(usize, bool)>>);
    impl ChunkSink for Count {
        fn chunk(&mut self, _: &Bytes) {
            lock(&self.0).0 += 1;
        }
        fn finish(&mut self) {
            lock(&self.0).1 = true;
        }
    }

    async fn collect(sub: Subscriber) -> Vec<Bytes> {
        sub.into_stream().map(|c| c.unwrap()).collect().await
    }

    #[tokio::test]
    async fn followers_get_the_whole_stream_and_the_sink_sees_it_once() {
        let flights = Arc::new(StreamFlights::default());
        let Join::Lead(leader) = flights.join("k") else {
            panic!("first joiner leads")
        };
        let seen = Arc::new(Mutex::new((0, false)));
        let sink = Box::new(Count(seen.clone()));
        let lead = tokio::spawn(async move {
            collect(leader.start(async { Ok(chunks(20)) }, sink).await.unwrap()).await
        });
        tokio::time::sleep(Duration::from_millis(40)).await; // mid-stream
        let Join::Follow(mut follower) = flights.join("k") else {
            panic!("second joiner follows")
        };
        assert!(follower.wait_started(Duration::from_secs(1)).await);
        let late = collect(follower).await;
        let first = lead.await.unwrap();
        assert_eq!(first.len(), 20);
        assert_eq!(late, first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(flights.is_empty(), "the flight ends with its stream");
        assert_eq!(*lock(&seen), (20, true), "one upstream read, stored once");
    }

    #[tokio::test]
    async fn a_leader_dropped_before_it_starts_releases_its_followers() {
        let flights = Arc::new(StreamFlights::default());
        let Join::Lead(leader) = flights.join("k") else {
            panic!("first joiner leads")
        };
        let Join::Follow(mut follower) = flights.join("k") else {
            panic!("second joiner follows")
        };
        drop(leader);
        assert!(flights.is_empty());
        // At once, not after the timeout: the follower makes its own call.
        let started = tokio::time::timeout(
            Duration::from_millis(200),
            follower.wait_started(Duration::from_secs(60)),
        )
        .await;
        assert_eq!(started, Ok(false));
        assert!(matches!(flights.join("k"), Join::Lead(_)));
    }

    #[tokio::test]
    async fn a_refusal_goes_to_the_leader_only() {
        let flights = Arc::new(StreamFlights::default());
        let Join::Lead(leader) = flights.join("k") else {
            panic!("first joiner leads")
        };
        let Join::Follow(mut follower) = flights.join("k") else {
            panic!("second joiner follows")
        };
        let seen = Arc::new(Mutex::new((0, false)));
        let refused = leader
            .start(
                async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Err(UpstreamError::Unreachable {
                        message: "refused".to_owned(),
                        timeout: false,
                    })
                },
                Box::new(Count(seen.clone())),
            )
            .await;
        assert!(
            matches!(refused, Err(UpstreamError::Unreachable { message, .. }) if message == "refused")
        );
        assert!(!follower.wait_started(Duration::from_secs(1)).await);
        assert_eq!(*lock(&seen), (0, false));
        assert!(flights.is_empty());
    }
}
