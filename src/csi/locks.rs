//! Per-key async locks: the CO may retry a call while the first attempt is
//! still running; calls on one volume (or one CreateVolume name) run one at
//! a time, calls on different volumes in parallel.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.locks.lock();
            // Drop entries nobody holds so the map does not grow forever.
            map.retain(|_, m| Arc::strong_count(m) > 1);
            Arc::clone(map.entry(key.to_string()).or_default())
        };
        m.lock_owned().await
    }
}
