//! Single-key reads gathered into `MGET`s while earlier reads are in flight.
//!
//! A proxy under load reads many distinct keys at once. Each `GET` through fred costs a command
//! hand-off to the connection's task, one `writev` (whose loopback delivery wakes Redis inside
//! the syscall) and a wake-up of the reader; on a small machine those wake-ups, not Redis, are
//! most of a hit's CPU. So at most [`MAX_IN_FLIGHT`] reads go out at a time: a read that finds
//! that many on the wire waits in a queue, and when one comes back, everything queued goes out
//! as one `MGET` (grouped by hash slot on a Cluster). One reader alone still sends a plain `GET`
//! at once: batching adds no latency when there is nothing to batch with.
//!
//! A read whose caller gives up (its deadline) leaves the queue's answer unread; the batch runs
//! in its own task, so a cancelled caller never strands the others. A key holding another type
//! (a hash, a list) is an error when read alone (`WRONGTYPE`) and absent when read in a batch
//! (`MGET` answers nil for it): a miss either way.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use fred::clients::WithOptions;
use fred::prelude::{
    Client, ClientLike, Error as FredError, ErrorKind, KeysInterface, Options, Pool,
};
use fred::types::Key;
use tokio::sync::oneshot;

use crate::backend::slot_groups;

/// Reads on the wire at once before later ones queue for the next `MGET`.
pub(crate) const MAX_IN_FLIGHT: usize = 2;
/// Keys per `MGET`: a batch's reply is one reply, under one command timeout.
const MAX_BATCH: usize = 64;

type Answer = std::result::Result<Option<Bytes>, FredError>;
/// A queued read: its key, and where its answer goes.
type Read = (Key, oneshot::Sender<Answer>);

pub(crate) struct Reads {
    pool: Pool,
    options: Options,
    cluster: bool,
    state: Mutex<State>,
    /// Reads answered by a batch (also those sent alone from the queue).
    batched: AtomicU64,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    queue: Vec<Read>,
}

impl Reads {
    pub(crate) fn new(pool: Pool, options: Options, cluster: bool) -> Arc<Self> {
        Arc::new(Reads {
            pool,
            options,
            cluster,
            state: Mutex::new(State::default()),
            batched: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn client(&self) -> WithOptions<Client> {
        self.pool.next_connected().with_options(&self.options)
    }

    /// `GET key`, sent at once or with the next batch.
    pub(crate) async fn get(self: &Arc<Self>, key: &str) -> Answer {
        let rx = {
            let mut st = self.lock();
            if st.in_flight < MAX_IN_FLIGHT {
                st.in_flight += 1;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                st.queue.push((Key::from(key), tx));
                Some(rx)
            }
        };
        match rx {
            None => {
                let _slot = Slot(self.clone());
                self.client().get::<Option<Bytes>, _>(key).await
            }
            Some(rx) => rx.await.unwrap_or_else(|_| {
                Err(FredError::new(
                    ErrorKind::Canceled,
                    "the batched read was dropped",
                ))
            }),
        }
    }

    /// Gives a finished read's slot to the queue's batch, or frees it.
    fn release(self: &Arc<Self>) {
        let batch = {
            let mut st = self.lock();
            if st.queue.is_empty() {
                st.in_flight -= 1;
                return;
            }
            std::mem::take(&mut st.queue)
        };
        let slot = BatchSlot {
            reads: self.clone(),
            done: false,
        };
        // Without a runtime (or with one shutting down, which drops the task unrun), the slot
        // is freed and the batch's readers get an error: a miss.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(run(slot, batch));
        }
    }

    async fn send(&self, batch: Vec<Read>) {
        // Readers that gave up no longer need their key read.
        let batch: Vec<_> = batch
            .into_iter()
            .filter(|(_, tx)| !tx.is_closed())
            .collect();
        self.batched.fetch_add(batch.len() as u64, Relaxed);
        let groups = self.groups(batch);
        let client = self.client();
        futures::future::join_all(groups.into_iter().map(|group| {
            let client = client.clone();
            async move {
                if let [(key, _)] = group.as_slice() {
                    let answer = client.get::<Option<Bytes>, _>(key.clone()).await;
                    let (_, tx) = group.into_iter().next().expect("one read");
                    let _ = tx.send(answer);
                    return;
                }
                let keys: Vec<Key> = group.iter().map(|(k, _)| k.clone()).collect();
                match client.mget::<Vec<Option<Bytes>>, _>(keys).await {
                    Ok(values) if values.len() == group.len() => {
                        for ((_, tx), v) in group.into_iter().zip(values) {
                            let _ = tx.send(Ok(v));
                        }
                    }
                    Ok(values) => {
                        let msg = format!(
                            "MGET of {} keys answered {} values",
                            group.len(),
                            values.len()
                        );
                        for (_, tx) in group {
                            let _ = tx.send(Err(FredError::new(ErrorKind::Protocol, msg.clone())));
                        }
                    }
                    // A connection that failed or timed out fails every read of the batch.
                    Err(e) if is_connection_error(&e) => {
                        for (_, tx) in group {
                            let _ = tx.send(Err(e.clone()));
                        }
                    }
                    // Anything else (a Cluster slot being migrated: `TRYAGAIN`): each key is
                    // read alone, so a batch never fails a read a `GET` would answer.
                    Err(_) => {
                        futures::future::join_all(group.into_iter().map(|(key, tx)| {
                            let client = client.clone();
                            async move {
                                let _ = tx.send(client.get::<Option<Bytes>, _>(key).await);
                            }
                        }))
                        .await;
                    }
                }
            }
        }))
        .await;
    }

    /// One group per `MGET`: by hash slot on a Cluster, at most [`MAX_BATCH`] keys each.
    fn groups(&self, batch: Vec<Read>) -> Vec<Vec<Read>> {
        let keys: Vec<&[u8]> = batch.iter().map(|(k, _)| k.as_bytes()).collect();
        let groups = slot_groups(&keys, self.cluster, MAX_BATCH);
        let mut items: Vec<Option<Read>> = batch.into_iter().map(Some).collect();
        groups
            .into_iter()
            .map(|idxs| {
                idxs.into_iter()
                    .map(|i| items[i].take().expect("each read in one group"))
                    .collect()
            })
            .collect()
    }
}

/// Sends batches until the queue is empty, then frees the slot.
async fn run(mut slot: BatchSlot, mut batch: Vec<Read>) {
    loop {
        slot.reads.send(batch).await;
        let mut st = slot.reads.lock();
        if st.queue.is_empty() {
            // Under the lock that saw the queue empty: a read queued after this finds a
            // free slot.
            st.in_flight -= 1;
            slot.done = true;
            return;
        }
        batch = std::mem::take(&mut st.queue);
    }
}

/// The read slot a batch task holds. Freed by the task when the queue is empty; if the task
/// is dropped before that (a runtime shutting down, a panic), freed on drop, and the reads
/// still queued get an error (their answer senders are dropped) rather than wait for a slot.
struct BatchSlot {
    reads: Arc<Reads>,
    done: bool,
}

impl Drop for BatchSlot {
    fn drop(&mut self) {
        if !self.done {
            let queued = {
                let mut st = self.reads.lock();
                st.in_flight -= 1;
                std::mem::take(&mut st.queue)
            };
            drop(queued);
        }
    }
}

#[cfg(test)]
impl Reads {
    fn in_flight(&self) -> usize {
        self.lock().in_flight
    }
}

fn is_connection_error(e: &FredError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled | ErrorKind::Backpressure
    )
}

/// A read slot, released when the direct `GET` finishes or its caller gives up.
struct Slot(Arc<Reads>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    //! Against the shared Redis services (`cargo xtask services up redis redis-cluster`).
    use std::time::Duration;

    use cache_core::CacheBackend;

    use crate::{Node, RedisBackend, RedisConfig};

    async fn connect(config: RedisConfig, what: &str) -> RedisBackend {
        let b = RedisBackend::connect(config)
            .await
            .expect("valid configuration");
        if let Err(e) = b.wait_connected(Duration::from_secs(10)).await {
            cache_core::testing::service_unavailable::<()>(what, &e.to_string());
        }
        b
    }

    /// 400 concurrent readers of distinct keys (every third one absent), then the same with
    /// half of the readers giving up at once: every answer is its own key's value, reads were
    /// gathered into batches, and no read slot is left taken.
    async fn batched_reads_answer_each_key(b: RedisBackend) {
        let b = std::sync::Arc::new(b);
        let ns = cache_core::testing::unique_namespace("reads");
        let keys: Vec<String> = (0..400).map(|i| format!("{ns}:{i:064x}")).collect();
        for (i, k) in keys.iter().enumerate() {
            if !i.is_multiple_of(3) {
                b.set(
                    k,
                    bytes::Bytes::from(format!("value {i}")),
                    Some(Duration::from_secs(60)),
                )
                .await
                .unwrap();
            }
        }
        let expect =
            |i: usize| (!i.is_multiple_of(3)).then(|| bytes::Bytes::from(format!("value {i}")));
        for round in 0..3 {
            let before = b.reads.batched.load(super::Relaxed);
            let tasks: Vec<_> = (0..keys.len())
                .map(|i| {
                    let b = b.clone();
                    let k = keys[i].clone();
                    tokio::spawn(async move {
                        if round > 0 && i % 2 == 1 {
                            // Gives up before any answer can come back.
                            let _ = tokio::time::timeout(Duration::from_micros(1), b.get(&k)).await;
                            return None;
                        }
                        Some(b.get(&k).await.unwrap())
                    })
                })
                .collect();
            for (i, t) in tasks.into_iter().enumerate() {
                if let Some(got) = t.await.unwrap() {
                    assert_eq!(got, expect(i), "round {round}, key {i}");
                }
            }
            assert!(
                b.reads.batched.load(super::Relaxed) > before,
                "round {round}: 400 concurrent reads were all sent one by one"
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while b.reads.in_flight() != 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a read slot is never released"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // One reader alone: a plain GET, sent at once.
        let before = b.reads.batched.load(super::Relaxed);
        assert_eq!(b.get(&keys[1]).await.unwrap(), expect(1));
        assert_eq!(b.reads.batched.load(super::Relaxed), before);
        b.clear(Some(&ns)).await.unwrap();
    }

    /// A batch task dropped before it ran (a runtime shutting down) frees its slot, and the
    /// reads queued behind it fail at once instead of waiting for a slot. (No server needed:
    /// nothing listens on port 17990.)
    #[test]
    fn a_batch_dropped_unrun_frees_its_slot_and_fails_the_queued_reads() {
        cache_core::testing::runtime().block_on(async {
            let b = RedisBackend::connect(RedisConfig::standalone("127.0.0.1", 17990))
                .await
                .unwrap();
            let reads = b.reads.clone();
            reads.lock().in_flight = super::MAX_IN_FLIGHT;
            let (tx, rx) = super::oneshot::channel();
            reads.lock().queue.push((super::Key::from("k"), tx));
            drop(super::BatchSlot {
                reads: reads.clone(),
                done: false,
            });
            assert_eq!(reads.in_flight(), super::MAX_IN_FLIGHT - 1);
            assert!(reads.lock().queue.is_empty());
            assert!(rx.await.is_err(), "a queued read was left waiting");
        });
    }

    #[test]
    #[ignore = "needs the redis test service: `cargo xtask services up redis`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    fn batched_reads_standalone() {
        cache_core::testing::runtime().block_on(async {
            let b = connect(
                RedisConfig::standalone("127.0.0.1", 17001),
                "redis (127.0.0.1:17001)",
            )
            .await;
            batched_reads_answer_each_key(b).await;
        });
    }

    /// On a Cluster the batch is split by hash slot: no `CROSSSLOT` error.
    #[test]
    #[ignore = "needs the redis-cluster test service: `cargo xtask services up redis-cluster`, then `cargo test -- --include-ignored` (cargo xtask test does both)"]
    fn batched_reads_cluster() {
        cache_core::testing::runtime().block_on(async {
            let config = RedisConfig::cluster(
                [17101, 17102, 17103]
                    .iter()
                    .map(|p| Node::new("127.0.0.1", *p))
                    .collect(),
            );
            let b = connect(config, "redis-cluster (127.0.0.1:17101-17106)").await;
            batched_reads_answer_each_key(b).await;
        });
    }
}
