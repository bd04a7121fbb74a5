//! The gate every state-changing request passes. A takeover closes it and
//! waits until no request is being answered; requests that arrive later are
//! held: their reply objects are forgotten, so nothing is sent (fuser would
//! answer EIO for a dropped reply) and the kernel keeps them in its
//! "being processed" list. The successor process, after the old one exited,
//! sends FUSE_NOTIFY_RESEND and the kernel queues them again. If the
//! takeover fails before anything was handed over, the gate opens again and
//! this process sends the RESEND itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Gate {
    closed: AtomicBool,
    /// Requests being answered.
    inflight: AtomicU64,
}

/// One request being answered; dropped once its reply is sent.
pub struct Pass(Arc<Gate>);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    /// A pass for one request, or `None` once the gate is closed.
    pub fn enter(self: &Arc<Self>) -> Option<Pass> {
        // Count first, then look: `close` sets the flag first, then waits
        // for the count, so no request slips through unseen.
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let pass = Pass(Arc::clone(self));
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        Some(pass)
    }

    /// Leave a request unanswered (see the module docs). `held` owns the
    /// request's reply.
    pub fn hold<T>(held: T) {
        std::mem::forget(held);
    }

    /// Stop answering; returns once no request is being answered, or
    /// `false` after `timeout` (the gate stays closed).
    pub fn close_and_drain(&self, timeout: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        while self.inflight.load(Ordering::SeqCst) != 0 {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Answer requests again.
    pub fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_waits_for_passes_and_refuses_new_ones() {
        let gate = Arc::new(Gate::default());
        let pass = gate.enter().expect("open gate");
        let g = Arc::clone(&gate);
        let closer = std::thread::spawn(move || g.close_and_drain(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(gate.enter().is_none(), "closed gate lets no request in");
        assert!(
            !closer.is_finished(),
            "close waits for the request in flight"
        );
        drop(pass);
        assert!(closer.join().unwrap());
        assert!(!gate.close_and_drain(Duration::ZERO) || gate.inflight.load(Ordering::SeqCst) == 0);
        gate.open();
        assert!(gate.enter().is_some());
    }

    #[test]
    fn a_stuck_request_makes_close_time_out() {
        let gate = Arc::new(Gate::default());
        let _pass = gate.enter().unwrap();
        assert!(!gate.close_and_drain(Duration::from_millis(20)));
        assert!(gate.enter().is_none(), "the gate stays closed");
    }
}
