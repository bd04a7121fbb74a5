//! Stopping a session's request loops without unmounting (local change 4,
//! see PATCHES.md).
//!
//! A process that hands its FUSE connection to another one (or leaves the
//! requests it read unanswered for a successor to have re-sent) must not
//! exit while one of its threads is inside `read(2)` on `/dev/fuse`
//! copying a request: the exit kills that thread, the copy into its buffer
//! fails, and the kernel ends the request with EIO for the application
//! (`fuse_dev_do_read`). A large WRITE, whose data is copied page by page
//! into a buffer not faulted in yet, is the request most exposed.
//!
//! `Quiescer::quiesce` asks every request loop to stop reading: a loop
//! blocked in `read(2)` is woken by a signal (which must have a handler
//! installed without `SA_RESTART`, so the read fails with EINTR before
//! taking a request); a loop that is copying or dispatching a request
//! finishes it first. A stopped loop parks its thread for good, so the
//! session neither returns from `run` nor unmounts; the process is
//! expected to exit or exec.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct QuiesceState {
    requested: AtomicBool,
    /// Threads of request loops that may be in `read(2)`.
    reading: Mutex<Vec<libc::pthread_t>>,
}

/// A request loop's registration; dropped when the loop returns.
pub(crate) struct Reader<'a>(&'a QuiesceState);

impl QuiesceState {
    /// Register the calling thread as a reader.
    pub(crate) fn register(&self) -> Reader<'_> {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(me);
        Reader(self)
    }

    pub(crate) fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn deregister(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.reading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|t| *t != me);
    }
}

impl Reader<'_> {
    /// Stop reading for good: the thread parks until the process ends.
    pub(crate) fn park(&self) -> ! {
        self.0.deregister();
        loop {
            std::thread::park();
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        self.0.deregister();
    }
}

/// Stops the request loops of a session (see the module docs). Obtained
/// with `Session::quiescer` before the session runs.
#[derive(Debug, Clone)]
pub struct Quiescer(pub(crate) Arc<QuiesceState>);

impl Quiescer {
    /// Ask every request loop to stop reading and wait until none is in
    /// `read(2)`, signalling the loops' threads with `signal` (its handler
    /// must be installed without `SA_RESTART`) until they stopped. Returns
    /// `false` if some loop was still reading after `timeout`. Irreversible.
    pub fn quiesce(&self, signal: libc::c_int, timeout: Duration) -> bool {
        self.0.requested.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        loop {
            {
                // Threads deregister under this lock before they exit, so
                // every id signalled here belongs to a live thread.
                let reading = self
                    .0
                    .reading
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if reading.is_empty() {
                    return true;
                }
                for thread in reading.iter() {
                    // SAFETY: a live thread (see above); a signal whose
                    // handler the caller installed.
                    unsafe { libc::pthread_kill(*thread, signal) };
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            // A loop signalled just before it entered read(2) missed the
            // signal: it is sent again.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
