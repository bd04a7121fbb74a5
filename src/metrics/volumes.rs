//! Per-volume metrics: every volume this process serves, read at scrape
//! time from its own counters ([`CachalotFs::sample`]) and its backend's
//! request statistics.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::backend::timed::{BackendStats, LATENCY_BUCKETS};
use crate::fs::{CachalotFs, FsSample};
use crate::warm::WarmProgress;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VolumeLabels {
    volume: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    volume: String,
    backend: String,
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrnoLabels {
    volume: String,
    backend: String,
    errno: String,
}

struct Registered {
    labels: VolumeLabels,
    fs: Weak<CachalotFs>,
    backend: Arc<BackendStats>,
    warm: Option<Arc<WarmProgress>>,
}

static VOLUMES: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

/// Keeps a volume in the metrics; dropping it takes the volume out.
pub struct VolumeRegistration {
    fs: Weak<CachalotFs>,
}

impl Drop for VolumeRegistration {
    fn drop(&mut self) {
        VOLUMES.lock().retain(|r| !r.fs.ptr_eq(&self.fs));
    }
}

/// Serve `fs`'s counters as volume `volume` (backend kind `backend`:
/// `file`, `nfs` or `s3`) until the registration is dropped; with the
/// progress of its warm-up when it has one.
pub fn register_volume(
    volume: &str,
    backend: &str,
    fs: &Arc<CachalotFs>,
    stats: Arc<BackendStats>,
    warm: Option<Arc<WarmProgress>>,
) -> VolumeRegistration {
    let weak = Arc::downgrade(fs);
    VOLUMES.lock().push(Registered {
        labels: VolumeLabels {
            volume: volume.to_string(),
            backend: backend.to_string(),
        },
        fs: weak.clone(),
        backend: stats,
        warm,
    });
    VolumeRegistration { fs: weak }
}

/// Reads one value of a volume's sample.
type Reading = dyn Fn(&FsSample) -> u64;

#[derive(Debug)]
pub(super) struct VolumesCollector;

impl Collector for VolumesCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let volumes: Vec<(VolumeLabels, FsSample, Arc<BackendStats>)> = VOLUMES
            .lock()
            .iter()
            .filter_map(|r| {
                let fs = r.fs.upgrade()?;
                Some((r.labels.clone(), fs.sample(), Arc::clone(&r.backend)))
            })
            .collect();
        let warms: Vec<(VolumeLabels, Arc<WarmProgress>)> = VOLUMES
            .lock()
            .iter()
            .filter(|r| r.fs.strong_count() > 0)
            .filter_map(|r| Some((r.labels.clone(), Arc::clone(r.warm.as_ref()?))))
            .collect();
        let per_volume = |f: &Reading| -> Vec<(VolumeLabels, u64)> {
            volumes.iter().map(|(l, s, _)| (l.clone(), f(s))).collect()
        };
        use super::{counters, gauges};
        let volume_counters: [(&str, &str, &Reading); 13] = [
            ("cachalot_cache_evictions", "Pages this process evicted from the volume's cache directory (shared by its volumes)", &|s| s.cache.counters.evictions),
            ("cachalot_cache_hits", "Pages served from the cache (page files, whole files and memory)", &|s| s.cache.counters.hits),
            ("cachalot_cache_memory_hits", "Pages served from memory (part of the hits)", &|s| s.cache.counters.memory_hits),
            ("cachalot_cache_misses", "Pages the cache did not have", &|s| s.cache.counters.misses),
            ("cachalot_cache_corrupt_pages", "Damaged pages dropped (and fetched again)", &|s| s.cache.counters.corrupt_pages),
            ("cachalot_cache_skipped_pages", "Pages not cached: no room on disk, or the cache disk fell behind the backend", &|s| s.cache.counters.skipped_pages),
            ("cachalot_cache_write_errors", "Failed writes of page files", &|s| s.cache.counters.write_errors),
            ("cachalot_backend_reads", "Pages read from the backend", &|s| s.backend_reads),
            ("cachalot_backend_read_bytes", "Bytes read from the backend", &|s| s.backend_read_bytes),
            ("cachalot_read_bytes", "Bytes applications read", &|s| s.read_bytes),
            ("cachalot_write_bytes", "Bytes applications wrote", &|s| s.write_bytes),
            ("cachalot_publishes", "Files published (made visible) in the backend", &|s| s.publishes),
            ("cachalot_publish_failures", "Publishes that failed (the application got the error)", &|s| s.publish_failures),
        ];
        for (name, help, get) in volume_counters {
            counters(&mut enc, name, help, per_volume(get))?;
        }
        let errors = volumes.iter().flat_map(|(l, s, _)| {
            s.errors.iter().map(move |(errno, n)| {
                let labels = ErrnoLabels {
                    volume: l.volume.clone(),
                    backend: l.backend.clone(),
                    errno: errno_name(*errno),
                };
                (labels, *n)
            })
        });
        counters(
            &mut enc,
            "cachalot_errors",
            "Errors answered to applications, by errno",
            errors,
        )?;
        let bytes = Some(&Unit::Bytes);
        let as_gauge = |f: &Reading| -> Vec<(VolumeLabels, i64)> {
            volumes
                .iter()
                .map(|(l, s, _)| (l.clone(), i64::try_from(f(s)).unwrap_or(i64::MAX)))
                .collect()
        };
        gauges(
            &mut enc,
            "cachalot_cache_volume",
            "This volume's bytes in the cache",
            bytes,
            as_gauge(&|s| s.cache.volume_bytes),
        )?;
        gauges(
            &mut enc,
            "cachalot_cache_used",
            "Bytes in the cache directory (all volumes and processes)",
            bytes,
            as_gauge(&|s| s.cache.bytes),
        )?;
        gauges(
            &mut enc,
            "cachalot_cache_quota",
            "The cache directory's quota",
            bytes,
            as_gauge(&|s| s.cache.quota_bytes),
        )?;
        gauges(
            &mut enc,
            "cachalot_prefetch_in_flight",
            "Pages being fetched from the backend now",
            None,
            as_gauge(&|s| s.prefetch_in_flight),
        )?;
        backend_requests(&mut enc, &volumes)?;
        warm_progress(&mut enc, &warms)
    }
}

/// The progress of the volumes' warm-ups (volumes that have one).
fn warm_progress(
    enc: &mut DescriptorEncoder,
    warms: &[(VolumeLabels, Arc<WarmProgress>)],
) -> Result<(), std::fmt::Error> {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let read = |f: &dyn Fn(&WarmProgress) -> &AtomicU64| -> Vec<(VolumeLabels, i64)> {
        warms
            .iter()
            .map(|(l, w)| {
                (
                    l.clone(),
                    i64::try_from(f(w).load(Relaxed)).unwrap_or(i64::MAX),
                )
            })
            .collect()
    };
    let bytes = Some(&Unit::Bytes);
    type Gauge<'a> = (&'a str, &'a str, Option<&'a Unit>, Vec<(VolumeLabels, i64)>);
    let gauges: [Gauge; 5] = [
        (
            "cachalot_warm_wanted",
            "Bytes of the files the warm-up loads",
            bytes,
            read(&|w| &w.wanted_bytes),
        ),
        (
            "cachalot_warm_done",
            "Bytes of them loaded or found cached so far",
            bytes,
            read(&|w| &w.done_bytes),
        ),
        (
            "cachalot_warm_wanted_files",
            "Files the warm-up loads",
            None,
            read(&|w| &w.wanted_files),
        ),
        (
            "cachalot_warm_done_files",
            "Files done (loaded, found cached, or failed)",
            None,
            read(&|w| &w.done_files),
        ),
        (
            "cachalot_warm_failed_files",
            "Files the warm-up could not load",
            None,
            read(&|w| &w.failed_files),
        ),
    ];
    for (name, help, unit, values) in gauges {
        super::gauges(enc, name, help, unit, values)?;
    }
    let running = warms
        .iter()
        .map(|(l, w)| (l.clone(), i64::from(w.running.load(Relaxed))));
    super::gauges(
        enc,
        "cachalot_warm_running",
        "1 while the warm-up runs",
        None,
        running,
    )
}

fn backend_requests(
    enc: &mut DescriptorEncoder,
    volumes: &[(VolumeLabels, FsSample, Arc<BackendStats>)],
) -> Result<(), std::fmt::Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let ops = || {
        volumes.iter().flat_map(|(l, _, b)| {
            b.ops()
                .filter(|(_, s)| s.requests.load(Relaxed) > 0)
                .map(move |(op, s)| {
                    let labels = OpLabels {
                        volume: l.volume.clone(),
                        backend: l.backend.clone(),
                        op: op.to_string(),
                    };
                    (labels, s)
                })
        })
    };
    super::counters(
        enc,
        "cachalot_backend_requests",
        "Requests to the backend, by operation",
        ops().map(|(l, s)| (l, s.requests.load(Relaxed))),
    )?;
    super::counters(
        enc,
        "cachalot_backend_request_errors",
        "Backend requests that failed, by operation",
        ops().map(|(l, s)| (l, s.errors.load(Relaxed))),
    )?;
    super::family(
        enc,
        "cachalot_backend_request_duration",
        "Latency of backend requests, by operation",
        Some(&Unit::Seconds),
        MetricType::Histogram,
        ops().map(|(l, s)| {
            let value = super::HistogramValue {
                bounds: &LATENCY_BUCKETS,
                per_bucket: s.buckets.iter().map(|b| b.load(Relaxed)).collect(),
                sum: s.micros.load(Relaxed) as f64 / 1e6,
            };
            (l, value)
        }),
    )
}

/// `ENOENT`, `EACCES`, ... (the number for the rare others).
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ENXIO => "ENXIO",
        libc::ETXTBSY => "ETXTBSY",
        libc::ENOSYS => "ENOSYS",
        other => return other.to_string(),
    };
    name.to_string()
}
