//! Prometheus metrics of a daemon: the registry it fills at start, the layer that counts and
//! times every gRPC call by method and code, and the `/metrics` endpoint it serves on
//! `--metrics-listen` (plain HTTP/1.1, one request per connection: what a Prometheus
//! scraper sends).
//!
//! Names follow Prometheus' conventions: the `hutch_` prefix, `_total` for counters,
//! `_seconds` and `_bytes` for units. Figures that are read from the system at scrape time
//! (per-container usage, containers by state) come from [`Collector`]s the daemons
//! register; the encoding runs on a blocking thread, as those collectors read files.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
pub use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub use prometheus_client::encoding::EncodeLabelSet as LabelSet;

/// Longest a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Labels of a finished call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// `hutch.v1.Agent`, `hutch.v1.Controller`, ...
    pub service: String,
    /// `RunContainer`, ...
    pub method: String,
    /// The gRPC code, as Prometheus users spell it (`OK`, `NOT_FOUND`, ...).
    pub code: String,
}

/// Labels of a call's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// See [`CallLabels::service`].
    pub service: String,
    /// See [`CallLabels::method`].
    pub method: String,
}

/// Call counts and durations of one daemon.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    calls: Family<CallLabels, Counter>,
    durations: Family<MethodLabels, Histogram>,
    /// `service/method` of every method hutch's API has: any other path a caller sends is
    /// counted as `unknown`, so callers cannot grow the label sets.
    known: std::sync::Arc<std::collections::HashSet<String>>,
}

/// `service/method` of every method in hutch's API (from its file descriptor set).
fn api_methods() -> std::collections::HashSet<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(hutch_proto::FILE_DESCRIPTOR_SET) else {
        return Default::default();
    };
    set.file
        .iter()
        .flat_map(|f| {
            let package = f.package().to_string();
            f.service.iter().flat_map(move |svc| {
                let service = format!("{package}.{}", svc.name());
                svc.method
                    .iter()
                    .map(move |m| format!("{service}/{}", m.name()))
            })
        })
        .collect()
}

/// A histogram of seconds from 0.5 ms to about 16 s.
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl RpcMetrics {
    /// Registers `hutch_grpc_requests_total` and `hutch_grpc_request_duration_seconds`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = RpcMetrics {
            calls: Family::default(),
            durations: Family::new_with_constructor(seconds_histogram),
            known: std::sync::Arc::new(api_methods()),
        };
        registry.register(
            "grpc_requests",
            "gRPC calls answered, by service, method and code (the code the answer starts with; a stream that fails later counts as OK)",
            metrics.calls.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time to the start of the answer (the whole call, for unary calls)",
            metrics.durations.clone(),
        );
        Arc::new(metrics)
    }

    fn record(&self, path: &str, code: &str, elapsed: Duration) {
        let path = path.trim_start_matches('/');
        let (service, method) = if self.known.contains(path) {
            path.split_once('/').unwrap_or(("", path))
        } else {
            ("unknown", "unknown")
        };
        self.calls
            .get_or_create(&CallLabels {
                service: service.to_string(),
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.durations
            .get_or_create(&MethodLabels {
                service: service.to_string(),
                method: method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// A gRPC code's name as Prometheus users spell it (`NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A gRPC service whose calls are counted and timed in [`RpcMetrics`].
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Option<Arc<RpcMetrics>>,
}

impl<S> Measured<S> {
    /// Wraps `inner`; without `metrics`, calls pass through untouched.
    pub fn new(inner: S, metrics: Option<Arc<RpcMetrics>>) -> Self {
        Measured { inner, metrics }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Measured<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;
type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tonic::codegen::Service<HttpRequest> for Measured<S>
where
    S: tonic::codegen::Service<HttpRequest, Response = HttpResponse> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = BoxFuture<HttpResponse, S::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let path = request.uri().path().to_string();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // An error answered at once carries its code in the headers (trailers-only);
            // otherwise the call started well.
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            metrics.record(&path, &code_name(code), started.elapsed());
            Ok(response)
        })
    }
}

/// Writes one family of values read at scrape time (`rows`: each label set and its value)
/// from a [`Collector`]; `kind` is [`MetricType::Gauge`] or [`MetricType::Counter`] (whose
/// name gets `_total`).
pub fn encode_rows<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    rows: &[(S, f64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in rows {
        let metric = family.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*value).encode(metric)?,
            _ => ConstGauge::new(*value).encode(metric)?,
        }
    }
    Ok(())
}

/// Binds the metrics address; the line a daemon prints says where it serves.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<(TcpListener, String)> {
    let listener = TcpListener::bind(addr).await?;
    let url = format!("http://{}/metrics", listener.local_addr()?);
    Ok((listener, url))
}

/// Scrapes answered at once; more connections wait for one to end.
const MAX_CONCURRENT_SCRAPES: usize = 4;
/// Longest a whole exchange may take (a reader that stops reading is dropped).
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `registry` as Prometheus text on `listener` (`GET /metrics`) until `shutdown`,
/// at most [`MAX_CONCURRENT_SCRAPES`] at a time, each within [`EXCHANGE_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            "metrics are served in plain HTTP without credentials beyond loopback: container and node names are readable by whoever reaches the port"
        );
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SCRAPES));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let registry = registry.clone();
                let slots = slots.clone();
                tokio::spawn(async move {
                    let Ok(_slot) = slots.acquire_owned().await else {
                        return;
                    };
                    match tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream, registry)).await {
                        Ok(Err(e)) => tracing::debug!("metrics request: {e}"),
                        Err(_) => {
                            tracing::debug!("metrics request: cut after {EXCHANGE_TIMEOUT:?}")
                        }
                        Ok(Ok(())) => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!("metrics listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The registry as Prometheus text (collectors run here: call it off the async threads).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        tracing::error!("encoding metrics: {e}");
    }
    text
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, registry: Arc<Registry>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if read.is_err() {
        return Ok(()); // A scraper that sends nothing gets nothing.
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => {
            let text = tokio::task::spawn_blocking(move || encode(&registry))
                .await
                .unwrap_or_default();
            ("200 OK", CONTENT_TYPE, text)
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "hutch serves its metrics at /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_as_prometheus_spells_them() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
    }

    #[test]
    fn calls_are_counted_by_method_and_code() {
        let mut registry = Registry::with_prefix("hutch");
        let metrics = RpcMetrics::register(&mut registry);
        metrics.record(
            "/hutch.v1.Agent/RunContainer",
            "OK",
            Duration::from_millis(3),
        );
        metrics.record(
            "/hutch.v1.Agent/RunContainer",
            "NOT_FOUND",
            Duration::from_millis(1),
        );
        // Paths no API has (a caller's invention) share one label set.
        for junk in ["/hutch.v1.Agent/Nope", "/x/y", "/hutch.v1.Agent/A"] {
            metrics.record(junk, "UNAUTHENTICATED", Duration::from_millis(1));
        }
        let text = encode(&registry);
        assert!(text.contains(
            "hutch_grpc_requests_total{service=\"unknown\",method=\"unknown\",code=\"UNAUTHENTICATED\"} 3"
        ), "{text}");
        assert!(text.contains(
            "hutch_grpc_requests_total{service=\"hutch.v1.Agent\",method=\"RunContainer\",code=\"OK\"} 1"
        ), "{text}");
        assert!(text.contains("hutch_grpc_request_duration_seconds_count{service=\"hutch.v1.Agent\",method=\"RunContainer\"} 2"), "{text}");
    }
}
