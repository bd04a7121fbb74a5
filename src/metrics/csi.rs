//! CSI metrics: every gRPC call by method and status code, with latency,
//! recorded by a tower layer around the tonic server (the services do not
//! know about it).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::backend::timed::LATENCY_BUCKETS;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Default)]
struct Latency {
    per_bucket: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
}

#[derive(Default)]
struct Calls {
    by_code: BTreeMap<CallLabels, u64>,
    latency: BTreeMap<MethodLabels, Latency>,
}

static CALLS: Mutex<Option<Calls>> = Mutex::new(None);

fn record(method: String, code: &str, took: Duration) {
    let mut calls = CALLS.lock();
    let calls = calls.get_or_insert_with(Calls::default);
    *calls
        .by_code
        .entry(CallLabels {
            method: method.clone(),
            code: code.to_string(),
        })
        .or_default() += 1;
    let latency = calls.latency.entry(MethodLabels { method }).or_default();
    let secs = took.as_secs_f64();
    let bucket = LATENCY_BUCKETS
        .iter()
        .position(|le| secs <= *le)
        .unwrap_or(LATENCY_BUCKETS.len());
    latency.per_bucket[bucket] += 1;
    latency.sum += secs;
}

/// Add to the tonic server (`Server::builder().layer(CsiMetricsLayer)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct CsiMetricsLayer;

impl<S> tower::Layer<S> for CsiMetricsLayer {
    type Service = CsiMetrics<S>;
    fn layer(&self, inner: S) -> CsiMetrics<S> {
        CsiMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct CsiMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for CsiMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // `/csi.v1.Node/NodeStageVolume` → `NodeStageVolume`
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let started = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let result = call.await;
            // A failed call is answered with its status in the headers
            // (trailers-only); a successful one has it in the trailers.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("OK".to_string(), |c| format!("{:?}", tonic::Code::from(c))),
                Err(_) => "Unknown".to_string(),
            };
            record(method, &code, started.elapsed());
            result
        })
    }
}

#[derive(Debug)]
pub(super) struct CsiCollector;

impl Collector for CsiCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let calls = CALLS.lock();
        let Some(calls) = calls.as_ref() else {
            return Ok(());
        };
        super::counters(
            &mut enc,
            "cachalot_csi_requests",
            "CSI calls, by method and status code",
            calls.by_code.iter().map(|(l, n)| (l.clone(), *n)),
        )?;
        super::family(
            &mut enc,
            "cachalot_csi_request_duration",
            "Latency of CSI calls, by method",
            Some(&Unit::Seconds),
            MetricType::Histogram,
            calls.latency.iter().map(|(l, h)| {
                let value = super::HistogramValue {
                    bounds: &LATENCY_BUCKETS,
                    per_bucket: h.per_bucket.to_vec(),
                    sum: h.sum,
                };
                (l.clone(), value)
            }),
        )
    }
}
