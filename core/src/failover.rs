//! A gRPC channel over every controller of a cluster that follows the leader.
//!
//! A cluster on etcd has several controllers; one leads and takes every call, the others
//! answer with UNAVAILABLE, a `hutch-not-leader` header and, when they know it, the
//! leader's URL in `hutch-leader`. [`FailoverChannel`] sends each call to the controller it
//! believes leads and, when the answer is such a refusal or the controller cannot be
//! connected to, goes where the refusal points (or to the next URL) and sends the call
//! again, until it is answered or `retry_for` has passed. A call is sent again only when
//! nothing can have been done with it: a follower's refusal, a connection that was never
//! made, or a read (Get, List, Watch, logs, stats).
//!
//! Calls that stream requests (an exec or attach session) are not buffered, so they are
//! never sent twice; the next call goes to the right controller. With one URL the channel
//! is a plain channel: no call is sent twice.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt;

/// The header naming the leader's URL on a follower's refusal.
pub const LEADER_HEADER: &str = "hutch-leader";
/// The header marking a refusal by a controller that does not lead (nothing was done).
pub const NOT_LEADER_HEADER: &str = "hutch-not-leader";
/// gRPC's UNAVAILABLE code, as it appears in the `grpc-status` header.
const UNAVAILABLE: &str = "14";
/// The pause before asking again when no leader is known (an election is under way).
const NO_LEADER_PAUSE: Duration = Duration::from_millis(100);
/// Methods whose requests are streams: never buffered or sent twice.
const STREAMING_REQUESTS: &[&str] = &["/ExecSession", "/Attach"];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the endpoint of one controller URL (scheme, TLS, timeouts).
pub type MakeEndpoint = Arc<dyn Fn(&str) -> Result<Endpoint, String> + Send + Sync>;

struct Target {
    /// `host:port`, without scheme.
    address: String,
    channel: Channel,
}

struct Inner {
    targets: Mutex<Vec<Target>>,
    current: AtomicUsize,
    make: MakeEndpoint,
    retry_for: Duration,
}

/// A channel over several controller URLs; cheap to clone (clones share the state).
#[derive(Clone)]
pub struct FailoverChannel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FailoverChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverChannel")
            .field("current", &self.current_address())
            .finish_non_exhaustive()
    }
}

/// `host:port` of a URL.
fn bare(url: &str) -> &str {
    url.strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url)
        .trim_end_matches('/')
}

/// Splits a comma-separated list of controller URLs (`HUTCH_CONTROLLER`, `--controller`).
pub fn split_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl FailoverChannel {
    /// A channel over `urls` (connected lazily, on first use). With more than one URL,
    /// refused or unconnectable calls are sent again elsewhere for up to `retry_for`.
    pub fn new(urls: &[String], make: MakeEndpoint, retry_for: Duration) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("no controller URL given".into());
        }
        let mut targets = Vec::new();
        for url in urls {
            let address = bare(url).to_string();
            if targets.iter().any(|t: &Target| t.address == address) {
                continue;
            }
            targets.push(Target {
                channel: make(url)?.connect_lazy(),
                address,
            });
        }
        let retry_for = if targets.len() > 1 {
            retry_for
        } else {
            Duration::ZERO
        };
        Ok(FailoverChannel {
            inner: Arc::new(Inner {
                targets: Mutex::new(targets),
                current: AtomicUsize::new(0),
                make,
                retry_for,
            }),
        })
    }

    /// [`FailoverChannel::new`], connected now: the URLs are tried in order until one
    /// connects, and calls start there. Fails with the URL and error of each when none
    /// does.
    pub async fn connect(
        urls: &[String],
        make: MakeEndpoint,
        retry_for: Duration,
    ) -> Result<Self, String> {
        let channel = FailoverChannel::new(urls, make.clone(), retry_for)?;
        let addresses: Vec<String> = channel
            .inner
            .targets()
            .iter()
            .map(|t| t.address.clone())
            .collect();
        let mut failures = Vec::new();
        for (at, address) in addresses.iter().enumerate() {
            let url = urls
                .iter()
                .find(|u| bare(u) == address)
                .cloned()
                .unwrap_or_else(|| address.clone());
            match make(&url)?.connect().await {
                Ok(connected) => {
                    channel.inner.targets()[at].channel = connected;
                    channel.inner.current.store(at, Ordering::Relaxed);
                    return Ok(channel);
                }
                Err(e) => failures.push(format!("{url}: {}", crate::error_chain(&e))),
            }
        }
        if let [only] = failures.as_slice() {
            // One controller: its error alone, as a plain connection would give it.
            return Err(only
                .split_once(": ")
                .map_or(only.clone(), |(_, e)| e.to_string()));
        }
        Err(failures.join("; "))
    }

    /// `host:port` of the controller calls go to now.
    pub fn current_address(&self) -> String {
        let (_, address, _) = self.inner.pick();
        address
    }
}

impl Inner {
    fn targets(&self) -> std::sync::MutexGuard<'_, Vec<Target>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current target: its index, address and channel.
    fn pick(&self) -> (usize, String, Channel) {
        let targets = self.targets();
        let i = self.current.load(Ordering::Relaxed) % targets.len();
        (i, targets[i].address.clone(), targets[i].channel.clone())
    }

    /// Moves on from target `i` (if it is still the current one) to the next.
    fn advance_from(&self, i: usize) {
        let n = self.targets().len();
        let _ = self
            .current
            .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Points at the controller a refusal named, adding it if this channel did not know it;
    /// returns its index (`None` for a URL that cannot be used).
    fn point_at(&self, leader_url: &str) -> Option<usize> {
        let address = bare(leader_url);
        let mut targets = self.targets();
        if let Some(i) = targets.iter().position(|t| t.address == address) {
            self.current.store(i, Ordering::Relaxed);
            return Some(i);
        }
        let endpoint = (self.make)(leader_url).ok()?;
        targets.push(Target {
            address: address.to_string(),
            channel: endpoint.connect_lazy(),
        });
        self.current.store(targets.len() - 1, Ordering::Relaxed);
        Some(targets.len() - 1)
    }

    /// After a refusal by target `i` naming `leader` (empty: none known): points at the
    /// leader, or moves on; true when the next try goes to the same target (so the caller
    /// pauses rather than spin).
    fn after_refusal(&self, i: usize, leader: &str) -> bool {
        match (!leader.is_empty())
            .then(|| self.point_at(leader))
            .flatten()
        {
            Some(next) => next == i,
            None => {
                self.advance_from(i);
                true
            }
        }
    }
}

/// True for methods that only read: sending them twice changes nothing.
fn is_read(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or("");
    ["Get", "List", "Watch", "ContainerLogs", "ContainerStats"]
        .iter()
        .any(|p| method.starts_with(p))
}

/// True when the connection was never made (so the call was never sent): a refused
/// connection, or the connector's own error. Errors of a connection that was made (reset,
/// broken pipe, unreachable after a partition) do not count: the call may have been sent.
fn never_connected(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        // hyper-util's connector error: raised only while connecting.
        if err.to_string().starts_with("tcp connect error") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// How a refusal from a controller that does not lead reads: `Some(leader URL or "")`.
fn refusal(response: &http::Response<Body>) -> Option<String> {
    let headers = response.headers();
    let unavailable = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == UNAVAILABLE.as_bytes());
    if !unavailable || !headers.contains_key(NOT_LEADER_HEADER) {
        return None;
    }
    Some(
        headers
            .get(LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    )
}

/// A request with the same head as `head` and `body`.
fn rebuild(head: &http::request::Parts, body: bytes::Bytes) -> http::Request<Body> {
    let mut req = http::Request::new(Body::new(http_body_util::Full::new(body)));
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

impl tower::Service<http::Request<Body>> for FailoverChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call readies the channel it picks.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let streaming = STREAMING_REQUESTS.iter().any(|m| path.ends_with(m));
            if streaming || inner.retry_for.is_zero() {
                let (i, _, channel) = inner.pick();
                let answer = channel.oneshot(req).await;
                match &answer {
                    Ok(response) => {
                        if let Some(leader) = refusal(response) {
                            inner.after_refusal(i, &leader);
                        }
                    }
                    Err(_) => inner.advance_from(i),
                }
                return answer.map_err(Into::into);
            }
            let (head, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            let deadline = Instant::now() + inner.retry_for;
            let read = is_read(&path);
            loop {
                let (i, _, channel) = inner.pick();
                let answer = channel.oneshot(rebuild(&head, body.clone())).await;
                let out_of_time = Instant::now() >= deadline;
                match answer {
                    Ok(response) => {
                        let Some(leader) = refusal(&response) else {
                            return Ok(response);
                        };
                        if out_of_time {
                            return Ok(response);
                        }
                        if inner.after_refusal(i, &leader) {
                            tokio::time::sleep(NO_LEADER_PAUSE).await;
                        }
                    }
                    Err(e) => {
                        inner.advance_from(i);
                        if out_of_time || !(read || never_connected(&e)) {
                            return Err(e.into());
                        }
                        tokio::time::sleep(NO_LEADER_PAUSE).await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make() -> MakeEndpoint {
        Arc::new(|u: &str| {
            Endpoint::from_shared(format!("http://{}", bare(u))).map_err(|e| e.to_string())
        })
    }

    #[test]
    fn urls_split_and_compare_without_scheme() {
        assert_eq!(
            split_urls(" a:1, https://b:2 ,,c:3"),
            vec!["a:1", "https://b:2", "c:3"]
        );
        assert_eq!(bare("https://b:2/"), "b:2");
        assert_eq!(bare("b:2"), "b:2");
    }

    #[test]
    fn only_reads_count_as_safe_to_send_twice() {
        for read in [
            "GetContainer",
            "ListNodes",
            "WatchContainers",
            "ContainerLogs",
            "GetClusterStatus",
        ] {
            assert!(is_read(&format!("/hutch.v1.Controller/{read}")), "{read}");
        }
        for write in [
            "CreateContainer",
            "KillContainer",
            "RemoveContainer",
            "Heartbeat",
            "Exec",
        ] {
            assert!(
                !is_read(&format!("/hutch.v1.Controller/{write}")),
                "{write}"
            );
        }
    }

    #[test]
    fn only_a_connection_never_made_counts_as_not_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(never_connected(&refused));
        for sent in [
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::HostUnreachable,
            std::io::ErrorKind::TimedOut,
        ] {
            assert!(!never_connected(&std::io::Error::from(sent)), "{sent:?}");
        }
    }

    #[tokio::test]
    async fn refusals_point_at_the_leader_and_pause_when_going_nowhere_new() {
        let urls = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let ch = FailoverChannel::new(&urls, make(), Duration::from_secs(1)).expect("channel");
        // The leader named: go there, no pause.
        assert!(!ch.inner.after_refusal(0, "http://127.0.0.1:2"));
        assert_eq!(ch.current_address(), "127.0.0.1:2");
        // A refusal naming the refuser itself (a stale leader key): pause.
        assert!(ch.inner.after_refusal(1, "http://127.0.0.1:2"));
        // No leader known: move on, and pause.
        assert!(ch.inner.after_refusal(1, ""));
        assert_eq!(ch.current_address(), "127.0.0.1:1");
        // A leader this channel did not know is added.
        assert!(!ch.inner.after_refusal(0, "http://127.0.0.1:3"));
        assert_eq!(ch.current_address(), "127.0.0.1:3");
        // One URL: a plain channel, nothing sent twice.
        let one = FailoverChannel::new(&urls[..1], make(), Duration::from_secs(9)).expect("one");
        assert!(one.inner.retry_for.is_zero());
        assert!(FailoverChannel::new(&[], make(), Duration::ZERO).is_err());
    }
}
