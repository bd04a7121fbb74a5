//! INIT: what the adapter asks of the kernel (request sizes, background
//! requests, capabilities, FUSE passthrough) and the ABI it learns.

use fuser::{InitFlags, KernelConfig};

use super::FuseAdapter;

/// Largest read/write request we ask the kernel for (and its read-ahead:
/// see `mount::readahead`).
pub(crate) const MAX_IO: u32 = 1024 * 1024;
/// Requests the kernel may keep in flight in the background (readahead,
/// async writes); fuser's default of 16 throttles parallel readers.
const MAX_BACKGROUND: u16 = 128;

pub(super) fn init(adapter: &FuseAdapter, config: &mut KernelConfig) -> std::io::Result<()> {
    let abi = config.kernel_abi();
    *adapter.abi.lock() = Some((abi.0, abi.1));
    let _ = config.set_max_background(MAX_BACKGROUND);
    let _ = config.set_congestion_threshold(MAX_BACKGROUND * 3 / 4);
    let _ = config.set_max_write(MAX_IO);
    if let Err(max) = config.set_max_readahead(MAX_IO) {
        let _ = config.set_max_readahead(max);
    }
    // Each wanted capability on its own: an old kernel lacking one must
    // not cost us the others.
    for cap in [
        InitFlags::FUSE_ATOMIC_O_TRUNC,
        InitFlags::FUSE_AUTO_INVAL_DATA,
        InitFlags::FUSE_DO_READDIRPLUS,
        InitFlags::FUSE_READDIRPLUS_AUTO,
        InitFlags::FUSE_PARALLEL_DIROPS,
        InitFlags::FUSE_BIG_WRITES,
        // We drop setuid/setgid ourselves when content changes (see
        // `CachalotFs::write_session`): the kernel would otherwise send
        // a chmod as the writer first, which a backend refuses to a
        // user who is not the owner.
        InitFlags::FUSE_HANDLE_KILLPRIV_V2,
    ] {
        if config.add_capabilities(cap).is_err() {
            tracing::debug!(?cap, "kernel lacks FUSE capability");
        }
    }
    if adapter.fs.config().passthrough {
        // Depth 2: the cache directory may itself be on overlayfs.
        let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        if granted {
            adapter.fs.activate_passthrough();
            tracing::info!("FUSE passthrough enabled for fully cached files");
        } else {
            tracing::info!("kernel without FUSE passthrough; all reads go through cachalot");
        }
    }
    Ok(())
}
