//! How much a daemon takes on, as a tower service around each gRPC service: a daemon-wide
//! budget of requests in flight, a share of it per client address, and a time limit per
//! request. Beyond a budget a call is answered at once (RESOURCE_EXHAUSTED) instead of
//! queueing without bound; a request that runs past the limit is answered
//! DEADLINE_EXCEEDED. Streams count, and are timed, only until their first answer, so open
//! watches, followed logs and sessions neither use up the budgets nor get cut.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// Most requests a daemon works on at once unless configured otherwise.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 512;
/// Most requests one client address may have in flight unless configured otherwise.
pub const DEFAULT_MAX_REQUESTS_PER_CLIENT: usize = 256;
/// Longest a request may take to be answered unless configured otherwise (a unary `Exec`
/// of a longer command should be an `ExecSession`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

/// A daemon's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Requests worked on at once, all clients together.
    pub max_concurrent_requests: usize,
    /// Requests one client address may have in flight.
    pub max_requests_per_client: usize,
    /// Longest a request may take to be answered; `None`: no limit.
    pub request_timeout: Option<Duration>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_requests_per_client: DEFAULT_MAX_REQUESTS_PER_CLIENT,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
        }
    }
}

/// The budgets every service of one daemon shares.
pub struct Budget {
    limits: ServerLimits,
    global: Arc<tokio::sync::Semaphore>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl Budget {
    /// Budgets for `limits`.
    pub fn new(limits: ServerLimits) -> Arc<Budget> {
        Arc::new(Budget {
            global: Arc::new(tokio::sync::Semaphore::new(
                limits.max_concurrent_requests.max(1),
            )),
            per_client: Mutex::default(),
            limits,
        })
    }

    /// Takes a slot for a request of `client`, or says which budget is used up.
    fn admit(self: &Arc<Self>, client: Option<IpAddr>) -> Result<Admitted, tonic::Status> {
        let Ok(permit) = self.global.clone().try_acquire_owned() else {
            return Err(tonic::Status::resource_exhausted(
                "this daemon is at its limit of requests in flight (max_concurrent_requests); retry with backoff",
            ));
        };
        if let Some(ip) = client {
            let mut clients = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let count = clients.entry(ip).or_insert(0);
            if *count >= self.limits.max_requests_per_client.max(1) {
                return Err(tonic::Status::resource_exhausted(format!(
                    "{ip} has {count} requests in flight, this daemon's limit per client (max_requests_per_client); retry with backoff"
                )));
            }
            *count += 1;
        }
        Ok(Admitted {
            budget: self.clone(),
            client,
            _permit: permit,
        })
    }
}

/// A request's hold on its daemon's budgets, also found in the request's extensions: work
/// that carries on after the answer (a start whose caller went away) keeps a clone until it
/// ends, so a caller that gives up early cannot have more work going than the limits allow.
#[derive(Clone)]
pub struct RequestSlot(#[allow(dead_code)] Arc<Admitted>);

/// A request's slots; given back when it is answered and nothing holds its [`RequestSlot`].
struct Admitted {
    budget: Arc<Budget>,
    client: Option<IpAddr>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some(ip) = self.client else { return };
        let mut clients = self
            .budget
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = clients.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                clients.remove(&ip);
            }
        }
    }
}

/// A gRPC service behind the daemon's [`Budget`] and request time limit.
#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    budget: Arc<Budget>,
}

impl<S> Limited<S> {
    /// Wraps `inner`; every service of a daemon shares `budget`.
    pub fn new(inner: S, budget: Arc<Budget>) -> Self {
        Limited { inner, budget }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Limited<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = std::pin::Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;
type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

/// The address a request came from, over TCP or TLS.
fn client_of(request: &HttpRequest) -> Option<IpAddr> {
    let ext = request.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map(|a| a.ip())
}

impl<S> tonic::codegen::Service<HttpRequest> for Limited<S>
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

    fn call(&mut self, mut request: HttpRequest) -> Self::Future {
        let path = request.uri().path().to_string();
        let admitted = match self.budget.admit(client_of(&request)) {
            Ok(a) => RequestSlot(Arc::new(a)),
            Err(status) => {
                tracing::warn!(%path, "overloaded: request shed: {}", status.message());
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        request.extensions_mut().insert(admitted.clone());
        let timeout = self.budget.limits.request_timeout;
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = match timeout {
                Some(limit) => match tokio::time::timeout(limit, answer).await {
                    Ok(response) => response,
                    Err(_) => {
                        tracing::warn!(%path, "request cut at request_timeout ({limit:?})");
                        Ok(tonic::Status::deadline_exceeded(format!(
                            "the request took longer than this daemon's request_timeout ({}); for long commands use ExecSession",
                            humantime::format_duration(limit)
                        ))
                        .into_http())
                    }
                },
                None => answer.await,
            };
            drop(admitted);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_shared_and_per_client() {
        let budget = Budget::new(ServerLimits {
            max_concurrent_requests: 3,
            max_requests_per_client: 2,
            request_timeout: None,
        });
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = budget.admit(Some(a)).expect("a 1");
        let second = budget.admit(Some(a)).expect("a 2");
        let third = budget.admit(Some(a)).err().expect("a is at its share");
        assert!(
            third.message().contains("max_requests_per_client"),
            "{third:?}"
        );
        let other = budget.admit(Some(b)).expect("b still gets in");
        let full = budget.admit(Some(b)).err().expect("the daemon is full");
        assert!(
            full.message().contains("max_concurrent_requests"),
            "{full:?}"
        );
        drop((first, other));
        assert!(budget.admit(Some(a)).is_ok(), "a slot came back");
        drop(second);
        assert_eq!(
            budget.per_client.lock().map(|m| m.len()).unwrap_or(9),
            0,
            "idle clients are forgotten"
        );
    }

    #[test]
    fn work_carried_past_the_answer_keeps_its_slot() {
        let budget = Budget::new(ServerLimits {
            max_concurrent_requests: 1,
            max_requests_per_client: 1,
            request_timeout: None,
        });
        let a: IpAddr = [192, 0, 2, 1].into();
        let slot = RequestSlot(Arc::new(budget.admit(Some(a)).expect("first")));
        let carried = slot.clone();
        drop(slot); // The request was answered (or its caller left)...
        assert!(budget.admit(Some(a)).is_err(), "...but its work goes on");
        drop(carried);
        assert!(
            budget.admit(Some(a)).is_ok(),
            "the work ended: the slot is back"
        );
    }
}
