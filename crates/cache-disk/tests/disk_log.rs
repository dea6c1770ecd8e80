//! Behaviour of the disk backend over the log engine (`disk_cache_engine: log`) in one
//! process: the behaviour every engine shares (`engine/behaviour.rs`), then the log's own.

use cache_disk::DiskEngine;

const ENGINE: DiskEngine = DiskEngine::Log;

#[path = "engine/behaviour.rs"]
mod behaviour;
