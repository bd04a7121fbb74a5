//! Blocking work (system calls on local files) from async code: on a
//! thread of the async runtime it goes to the runtime's blocking pool; on
//! a thread that allowed it (a FUSE worker answering a request of a volume
//! on a local filesystem, see `Capabilities::inline_io`) it runs right
//! there, sparing the two thread hand-offs that cost more than a `stat`.

use std::cell::Cell;

thread_local! {
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` (which may block: it is on a thread of its own) with blocking
/// work inside it done inline.
pub fn allow_inline<T>(f: impl FnOnce() -> T) -> T {
    let before = INLINE.with(|i| i.replace(true));
    let result = f();
    INLINE.with(|i| i.set(before));
    result
}

/// Whether blocking work runs on this thread (see `allow_inline`): then
/// it may borrow the caller's buffers instead of copying them.
pub fn is_inline() -> bool {
    INLINE.with(Cell::get)
}

/// Run `work`, inline if this thread allowed it, else on the blocking pool.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if is_inline() {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn work_runs_inline_only_where_allowed() {
        let here = std::thread::current().id();
        let pooled = run(move || std::thread::current().id()).await.unwrap();
        assert_ne!(pooled, here, "a runtime thread hands blocking work off");
        let handle = tokio::runtime::Handle::current();
        let (asked, ran) = std::thread::spawn(move || {
            let asked = std::thread::current().id();
            let ran = allow_inline(|| handle.block_on(run(move || std::thread::current().id())));
            (asked, ran.unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(asked, ran, "an allowing thread runs it itself");
    }
}
