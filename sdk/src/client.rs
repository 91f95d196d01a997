//! [`Client`]: a connection to the controller, with typed calls for containers, nodes and
//! rootfs.

use hutch_core::bearer::BearerToken;
use std::pin::Pin;
use std::time::Duration;

use hutch_core::failover::{split_urls, FailoverChannel, MakeEndpoint};
use hutch_proto::v1;
use hutch_proto::v1::controller_client::ControllerClient;
use tokio_stream::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

use crate::container::Container;
use crate::error::{Error, Result};
use crate::spec::ContainerSpec;

/// Whether a watch ended because its controller stopped serving it: it said so
/// (UNAVAILABLE: shutting down, no longer leading), or the connection broke (a status made
/// here from a transport error, which carries that error as its source; a killed
/// controller's stream ends so).
fn controller_gone(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    status.code() == tonic::Code::Unavailable
        || (status.code() == tonic::Code::Unknown && status.source().is_some())
}

/// Watch events buffered for a reader of [`Client::watch`].
const WATCH_BUFFER: usize = 64;
/// Between attempts to resume a watch whose controller stopped serving it.
const WATCH_RETRY: Duration = Duration::from_millis(200);

/// A stream of items from the cluster.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T>> + Send>>;

/// TLS to a controller that serves it: the cluster CA to trust (the controller's
/// `DATA_DIR/tls/ca.crt`), and optionally a certificate of this client's own.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM of the cluster CA.
    pub ca_pem: Vec<u8>,
    /// PEM of this client's certificate and key, for mutual TLS (clients usually send a
    /// bearer token instead).
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the controller's certificate must carry [default: `controller.hutch`,
    /// which every hutch controller's has, whatever address is dialed].
    pub server_name: Option<String>,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// Longest a unary call may take (streams are not limited).
    pub request_timeout: Option<Duration>,
    /// Bearer token sent with every call (`authorization: Bearer ...`).
    pub token: Option<String>,
    /// TLS settings.
    pub tls: Option<TlsOptions>,
    /// With several controller URLs: how long a call refused by a controller that does not
    /// lead, or sent to one that cannot be reached, keeps being sent to the others (the
    /// time a cluster on etcd takes to elect a new leader is about 1.5 s).
    pub failover_for: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: None,
            token: None,
            tls: None,
            failover_for: Duration::from_secs(15),
        }
    }
}

type Rpc = ControllerClient<InterceptedService<FailoverChannel, BearerToken>>;

/// A connection to the controller. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    rpc: Rpc,
    request_timeout: Option<Duration>,
    failover_for: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the controller at `url` (`http://host:port`, or `host:port`), or to the
    /// first that answers of a comma-separated list of a cluster's controllers: calls then
    /// follow the leader (see [`ClientOptions::failover_for`]).
    pub async fn connect(url: &str) -> Result<Client> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with explicit options. With `tls`, the URLs' scheme becomes `https`; an
    /// `https` URL without `tls` is refused (there is no CA to trust).
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client> {
        let urls = split_urls(url);
        if urls.is_empty() {
            return Err(Error::InvalidInput(
                "no controller URL given (HOST:PORT, or several separated by commas)".into(),
            ));
        }
        if let Some(https) = urls.iter().find(|u| u.starts_with("https://")) {
            if options.tls.is_none() {
                return Err(Error::InvalidInput(format!(
                    "{https} serves TLS: give the cluster CA (hutch --ca-cert FILE, HUTCH_CA_CERT; the controller's DATA_DIR/tls/ca.crt)"
                )));
            }
        }
        for u in &urls {
            endpoint_for(u, &options)?;
        }
        let make: MakeEndpoint = {
            let options = options.clone();
            std::sync::Arc::new(move |u: &str| endpoint_for(u, &options).map_err(|e| e.to_string()))
        };
        let channel = FailoverChannel::connect(&urls, make, options.failover_for)
            .await
            .map_err(|message| Error::Connect {
                url: urls.join(","),
                message,
            })?;
        let token = BearerToken::new(options.token.as_deref())
            .map_err(|e| Error::InvalidInput(format!("token: {e}")))?;
        Ok(Client {
            rpc: ControllerClient::with_interceptor(channel, token)
                .max_decoding_message_size(64 << 20),
            request_timeout: options.request_timeout,
            failover_for: options.failover_for,
        })
    }

    /// Every controller of the cluster, which one leads, and the store's health.
    pub async fn cluster_status(&self) -> Result<v1::GetClusterStatusResponse> {
        Ok(self
            .rpc()
            .get_cluster_status(self.request(v1::GetClusterStatusRequest {}))
            .await?
            .into_inner())
    }

    /// A join token for agents (`hutch-agent serve --join TOKEN`), valid for `ttl`
    /// (`None`: the controller's default, 1 hour). Needs an admin and a controller serving TLS.
    pub async fn create_join_token(
        &self,
        ttl: Option<Duration>,
        description: &str,
    ) -> Result<v1::CreateJoinTokenResponse> {
        Ok(self
            .rpc()
            .create_join_token(self.request(v1::CreateJoinTokenRequest {
                ttl_seconds: ttl.map_or(0, |d| d.as_secs().max(1)),
                description: description.into(),
            }))
            .await?
            .into_inner())
    }

    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(t) = self.request_timeout {
            r.set_timeout(t);
        }
        r
    }

    pub(crate) fn rpc(&self) -> Rpc {
        self.rpc.clone()
    }

    /// Creates a container (idempotent by name) and returns its handle and first record.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<(Container, v1::Container)> {
        let request = spec.to_request()?;
        let record = self
            .rpc()
            .create_container(self.request(request))
            .await?
            .into_inner();
        Ok((self.container(&record.name), record))
    }

    /// A handle on the container `id` (not checked until used).
    pub fn container(&self, id: &str) -> Container {
        Container::new(self.clone(), id)
    }

    /// One container's record.
    pub async fn get(&self, id: &str) -> Result<v1::Container> {
        Ok(self
            .rpc()
            .get_container(self.request(v1::GetContainerRequest { id: id.into() }))
            .await?
            .into_inner())
    }

    /// Containers matching the filter (all when it is empty), every page of them: the
    /// controller answers in pages (`filter.page_size` per answer, see
    /// `ListClusterContainersRequest`), which this follows to the last.
    pub async fn list(
        &self,
        mut filter: v1::ListClusterContainersRequest,
    ) -> Result<Vec<v1::Container>> {
        let mut all = Vec::new();
        loop {
            let page = self
                .rpc()
                .list_containers(self.request(filter.clone()))
                .await?
                .into_inner();
            all.extend(page.containers);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            if page.next_page_token == filter.page_token {
                return Err(Error::Status(tonic::Status::out_of_range(
                    "the controller answered the same page twice (its page token did not move on)",
                )));
            }
            filter.page_token = page.next_page_token;
        }
    }

    /// Every change after `since_revision` (0: all kept), then live ones. When the
    /// controller serving it stops leading or goes away (UNAVAILABLE, or a broken
    /// connection), the watch resumes
    /// from the last revision seen on the controller that leads next, for up to
    /// [`ClientOptions::failover_for`]; the reader sees no gap and no repeat.
    pub async fn watch(&self, since_revision: u64) -> Result<BoxStream<v1::WatchEvent>> {
        self.watch_filtered(v1::WatchContainersRequest {
            since_revision,
            ..Default::default()
        })
        .await
    }

    /// [`Client::watch`] narrowed on the controller: only changes of some containers,
    /// nodes or states, or since a time (the request's filters).
    pub async fn watch_filtered(
        &self,
        request: v1::WatchContainersRequest,
    ) -> Result<BoxStream<v1::WatchEvent>> {
        let first = self
            .rpc()
            .watch_containers(request.clone())
            .await?
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let client = self.clone();
        tokio::spawn(async move {
            let (mut request, mut stream) = (request, first);
            loop {
                // A reader that drops the stream ends the watch at once, not at the next
                // event.
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = tx.closed() => return,
                };
                let item = match next {
                    Some(Ok(event)) => {
                        request.since_revision = event.revision;
                        Ok(event)
                    }
                    // The controller stopped leading or went away: watch again from the
                    // last revision seen, on whichever leads now.
                    Some(Err(s)) if controller_gone(&s) => {
                        match client.watch_again(&request).await {
                            Ok(resumed) => {
                                stream = resumed;
                                continue;
                            }
                            Err(s) => Err(Error::from(s)),
                        }
                    }
                    Some(Err(s)) => Err(Error::from(s)),
                    None => return,
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return; // Dropped by its reader, or ended.
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// A watch resumed after its controller stopped serving it: tried again for
    /// [`ClientOptions::failover_for`] while the controllers answer UNAVAILABLE (an
    /// election takes about 1.5 s).
    async fn watch_again(
        &self,
        request: &v1::WatchContainersRequest,
    ) -> std::result::Result<tonic::Streaming<v1::WatchEvent>, tonic::Status> {
        let deadline = tokio::time::Instant::now() + self.failover_for;
        loop {
            match self.rpc().watch_containers(request.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s)
                    if s.code() == tonic::Code::Unavailable
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(WATCH_RETRY).await;
                }
                Err(s) => return Err(s),
            }
        }
    }

    /// Usage samples of the containers `ids` (every running one when empty): one each when
    /// `stream` is false, else one each per second until the stream is dropped.
    pub async fn stats(
        &self,
        ids: impl IntoIterator<Item = impl Into<String>>,
        stream: bool,
    ) -> Result<BoxStream<v1::ContainerUsage>> {
        let samples = self
            .rpc()
            .container_stats(v1::ContainerStatsRequest {
                ids: ids.into_iter().map(Into::into).collect(),
                stream,
            })
            .await?
            .into_inner();
        Ok(Box::pin(samples.map(|r| r.map_err(Error::from))))
    }

    /// The nodes.
    pub async fn nodes(&self) -> Result<Vec<v1::Node>> {
        Ok(self
            .rpc()
            .list_nodes(self.request(v1::ListNodesRequest {}))
            .await?
            .into_inner()
            .nodes)
    }

    /// One node.
    pub async fn node(&self, name: &str) -> Result<v1::Node> {
        Ok(self
            .rpc()
            .get_node(self.request(v1::GetNodeRequest { name: name.into() }))
            .await?
            .into_inner())
    }

    /// Stops placing containers on the node.
    pub async fn cordon(&self, name: &str) -> Result<v1::Node> {
        Ok(self
            .rpc()
            .cordon_node(self.request(v1::CordonNodeRequest { name: name.into() }))
            .await?
            .into_inner())
    }

    /// Places containers on the node again.
    pub async fn uncordon(&self, name: &str) -> Result<v1::Node> {
        Ok(self
            .rpc()
            .uncordon_node(self.request(v1::UncordonNodeRequest { name: name.into() }))
            .await?
            .into_inner())
    }

    /// Cordons the node and stops its containers (restartable ones move elsewhere).
    pub async fn drain(&self, name: &str) -> Result<v1::DrainNodeResponse> {
        Ok(self
            .rpc()
            .drain_node(v1::DrainNodeRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// Forgets a node (its block of the cluster network is released); refused while it is
    /// alive or holds containers unless `force` (its containers then become LOST).
    pub async fn remove_node(&self, name: &str, force: bool) -> Result<v1::RemoveNodeResponse> {
        Ok(self
            .rpc()
            .remove_node(self.request(v1::RemoveNodeRequest {
                name: name.into(),
                force,
            }))
            .await?
            .into_inner())
    }

    /// Builds a rootfs on one node (`node`), on nodes with these labels (`selector`), or on
    /// every ready node; streams each node's progress and result.
    pub async fn build_rootfs(
        &self,
        request: v1::ClusterBuildRootfsRequest,
    ) -> Result<BoxStream<v1::ClusterBuildRootfsResponse>> {
        let stream = self.rpc().build_rootfs(request).await?.into_inner();
        Ok(Box::pin(stream.map(|r| r.map_err(Error::from))))
    }

    /// Removes a rootfs from one node (`node`) or from every node.
    pub async fn remove_rootfs(
        &self,
        name: &str,
        node: &str,
    ) -> Result<v1::ClusterRemoveRootfsResponse> {
        Ok(self
            .rpc()
            .remove_rootfs(self.request(v1::ClusterRemoveRootfsRequest {
                name: name.into(),
                node: node.into(),
            }))
            .await?
            .into_inner())
    }

    /// Creates a named volume on `node` (empty: a ready node the scheduler picks).
    pub async fn create_volume(
        &self,
        name: &str,
        node: &str,
        labels: impl IntoIterator<Item = (String, String)>,
    ) -> Result<v1::Volume> {
        Ok(self
            .rpc()
            .create_volume(self.request(v1::CreateVolumeRequest {
                name: name.into(),
                node: node.into(),
                labels: labels.into_iter().collect(),
            }))
            .await?
            .into_inner())
    }

    /// One volume, as its node describes it (`node`: the one holding it, needed only when
    /// two nodes have a volume of that name; else empty).
    pub async fn volume(&self, name: &str, node: &str) -> Result<v1::Volume> {
        Ok(self
            .rpc()
            .get_volume(self.request(v1::GetVolumeRequest {
                name: name.into(),
                node: node.into(),
            }))
            .await?
            .into_inner())
    }

    /// Every ready node's volumes (or one node's), with the nodes that could not be asked.
    pub async fn volumes(&self, node: &str) -> Result<v1::ListVolumesResponse> {
        Ok(self
            .rpc()
            .list_volumes(self.request(v1::ListVolumesRequest { node: node.into() }))
            .await?
            .into_inner())
    }

    /// Deletes a volume and its data; refused while a container uses it (`node` as for
    /// [`Client::volume`]).
    pub async fn remove_volume(&self, name: &str, node: &str) -> Result<()> {
        self.rpc()
            .remove_volume(self.request(v1::RemoveVolumeRequest {
                name: name.into(),
                node: node.into(),
            }))
            .await?;
        Ok(())
    }

    /// Every node's rootfs (or one node's).
    pub async fn list_rootfs(&self, node: &str) -> Result<v1::ClusterListRootfsResponse> {
        Ok(self
            .rpc()
            .list_rootfs(self.request(v1::ClusterListRootfsRequest { node: node.into() }))
            .await?
            .into_inner())
    }
}

/// The endpoint of one controller URL with `options` (scheme, timeouts, TLS).
fn endpoint_for(url: &str, options: &ClientOptions) -> Result<Endpoint> {
    let bare = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{bare}");
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| Error::InvalidInput(format!("controller URL '{url}': {e}")))?
        .connect_timeout(options.connect_timeout)
        .tcp_nodelay(true);
    if let Some(tls) = &options.tls {
        endpoint = endpoint
            .tls_config(tls_config(tls))
            .map_err(|e| Error::InvalidInput(format!("TLS settings: {e}")))?;
    }
    Ok(endpoint)
}

/// tonic's TLS settings for `tls`.
fn tls_config(tls: &TlsOptions) -> tonic::transport::ClientTlsConfig {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .domain_name(
            tls.server_name
                .as_deref()
                .unwrap_or(hutch_core::bearer::CONTROLLER_TLS_NAME),
        );
    if let Some((cert, key)) = &tls.identity_pem {
        config = config.identity(Identity::from_pem(cert, key));
    }
    config
}
