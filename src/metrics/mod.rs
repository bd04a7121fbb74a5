//! Prometheus metrics at `/metrics` (`--metrics-addr` on `mount`,
//! `mounter` and `csi`).
//!
//! Nothing here counts: each scrape reads the counters the volumes and the
//! CSI server keep anyway (the same ones the stats attribute and `cache
//! stats` show), so there is one source of truth. Volumes register
//! themselves when they start serving and drop out when they stop.
//! Encoding is prometheus-client's.

mod csi;
mod volumes;

use std::net::SocketAddr;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

pub use csi::CsiMetricsLayer;
pub use volumes::{register_volume, VolumeRegistration};

#[derive(Debug, thiserror::Error)]
#[error("serving metrics on {addr}: {source}")]
pub struct ServeError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Listen on `addr` and serve `/metrics` from a thread of its own (so the
/// endpoint answers however busy the volumes' runtimes are). The listener
/// is bound before this returns: a taken port is an error here, not a log
/// line later. Returns the bound address (port 0 picks one).
pub fn serve_in_background(addr: SocketAddr) -> Result<SocketAddr, ServeError> {
    let err = |source| ServeError { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(err)?;
    spawn_server(listener).map_err(err)
}

/// The same for a process that replaces another on the same address (a
/// mounter taking over): binding is retried every second until the
/// predecessor let go of the port (it exits or re-executes itself idle, and
/// the listener, close-on-exec, goes with it).
pub fn serve_when_free(addr: SocketAddr) {
    let spawned = std::thread::Builder::new()
        .name("metrics-bind".into())
        .spawn(move || {
            let mut logged = false;
            loop {
                match std::net::TcpListener::bind(addr) {
                    Ok(listener) => {
                        if let Err(e) = spawn_server(listener) {
                            tracing::error!(%addr, error = %e, "cannot serve metrics");
                        }
                        return;
                    }
                    Err(e) if !logged => {
                        tracing::info!(%addr, error = %e, "the metrics address is taken (a predecessor?); retrying every second");
                        logged = true;
                    }
                    Err(_) => {}
                }
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        });
    if let Err(e) = spawned {
        tracing::error!(%addr, error = %e, "cannot serve metrics");
    }
}

fn spawn_server(listener: std::net::TcpListener) -> std::io::Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let app = axum::Router::new().route("/metrics", axum::routing::get(metrics_page));
                let served = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => axum::serve(listener, app).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = served {
                    tracing::error!(%bound, error = %e, "the metrics endpoint stopped");
                }
            })
        })?;
    tracing::info!(%bound, "serving Prometheus metrics at /metrics");
    Ok(bound)
}

async fn metrics_page() -> impl axum::response::IntoResponse {
    let body = render();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// Everything this process has to say, in the OpenMetrics text format.
pub fn render() -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(volumes::VolumesCollector));
    registry.register_collector(Box::new(csi::CsiCollector));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// One family of values, each with its label set, written through `enc`.
fn family<L, M>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    values: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let mut metric = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in values {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<L: prometheus_client::encoding::EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    family(
        enc,
        name,
        help,
        None,
        MetricType::Counter,
        values.into_iter().map(|(l, v)| (l, ConstCounter::new(v))),
    )
}

fn gauges<L: prometheus_client::encoding::EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    family(
        enc,
        name,
        help,
        unit,
        MetricType::Gauge,
        values.into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
    )
}

/// A histogram read from plain counters: per-bucket counts (not
/// cumulative, one more than `bounds` for +Inf), their count and sum.
struct HistogramValue<'a> {
    bounds: &'a [f64],
    per_bucket: Vec<u64>,
    sum: f64,
}

impl std::fmt::Debug for HistogramValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistogramValue").finish_non_exhaustive()
    }
}

impl EncodeMetric for HistogramValue<'_> {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        // The encoder adds the buckets up itself: it takes per-bucket
        // counts (f64::MAX is its +Inf).
        let buckets: Vec<(f64, u64)> = self
            .per_bucket
            .iter()
            .enumerate()
            .map(|(i, &n)| (self.bounds.get(i).copied().unwrap_or(f64::MAX), n))
            .collect();
        let count = self.per_bucket.iter().sum();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum, count, &buckets, None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;

    #[test]
    fn histogram_buckets_are_cumulative_once_and_end_at_the_count() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(OneHistogram));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("encoding a histogram");
        let bucket = |le: &str| -> u64 {
            let key = format!("t_seconds_bucket{{le=\"{le}\"}} ");
            let line = text
                .lines()
                .find(|l| l.starts_with(&key))
                .unwrap_or_else(|| panic!("no bucket le={le} in\n{text}"));
            line[key.len()..].parse().expect("a count")
        };
        assert_eq!(bucket("0.001"), 2, "{text}");
        assert_eq!(bucket("0.01"), 2, "{text}");
        assert_eq!(bucket("0.1"), 5, "{text}");
        assert_eq!(bucket("+Inf"), 6, "{text}");
        assert!(text.contains("t_seconds_count 6\n"), "{text}");
    }

    #[derive(Debug)]
    struct OneHistogram;

    impl Collector for OneHistogram {
        fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let value = HistogramValue {
                bounds: &[0.001, 0.01, 0.1],
                per_bucket: vec![2, 0, 3, 1],
                sum: 1.5,
            };
            let metric =
                enc.encode_descriptor("t", "test", Some(&Unit::Seconds), MetricType::Histogram)?;
            value.encode(metric)
        }
    }
}
