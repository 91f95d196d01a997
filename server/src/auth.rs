//! Who may call: bearer tokens with roles, and the certificates of the cluster CA, checked
//! by a tower service wrapped around each gRPC service of both daemons.
//!
//! Tokens come from a static file (`tokens_file`), one `TOKEN,NAME,ROLE` per line, as
//! Kubernetes' static token file: `admin` may do everything, `read-only` may get, list,
//! watch and read logs and events, `node` may only register and heartbeat at a controller,
//! and only as the node called NAME: a node token proves one node's identity, as a node
//! certificate does (both reach the handlers as a [`Peer::Node`]).
//! Over TLS, a caller may instead present a certificate of the cluster CA: the controller's
//! is an admin at agents, a node's may register and heartbeat at the controller (under its
//! own name only, see [`Peer`] in the request's extensions), and nothing else. A controller
//! serving TLS registers agents by certificate only. Without a tokens file, a plaintext
//! daemon lets every call through (the loopback quick start); an agent serving TLS never
//! does. Health checks, reflection and `Nodes/Join` stay open: the first two reveal only
//! the API's shape, and a join carries its own credential, the join token.

pub use hutch_pki::peer::Peer;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::Status;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Get, list, watch, logs.
    ReadOnly,
    /// Register and heartbeat: an agent's token.
    Node,
}

impl Role {
    /// The name used in the tokens file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
            Role::Node => "node",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Role::Admin),
            "read-only" | "readonly" => Ok(Role::ReadOnly),
            "node" => Ok(Role::Node),
            other => Err(format!(
                "unknown role '{other}': use admin, read-only or node"
            )),
        }
    }
}

/// The known tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    by_token: HashMap<String, (String, Role)>,
}

/// Shortest token accepted: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Parses `TOKEN,NAME,ROLE` lines (blank lines and `#` comments skipped).
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [token, name, role] = fields[..] else {
                return Err(format!("line {n}: expected TOKEN,NAME,ROLE"));
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {n}: the token of '{name}' is shorter than {MIN_TOKEN_LEN} characters (make one with: openssl rand -hex 32)"
                ));
            }
            let role = role.parse().map_err(|e| format!("line {n}: {e}"))?;
            if by_token
                .insert(token.to_string(), (name.to_string(), role))
                .is_some()
            {
                return Err(format!("line {n}: this token is listed twice"));
            }
        }
        if by_token.is_empty() {
            return Err("no tokens in the file: every call would be refused".into());
        }
        Ok(Tokens { by_token })
    }

    /// Reads and parses a tokens file; errors name the file.
    pub fn load(path: &std::path::Path) -> Result<Tokens, String> {
        std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| Tokens::parse(&t))
            .map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

/// The least role a method needs (`path` is `/package.Service/Method`); `None` when it
/// needs no credential at all.
fn needed_role(path: &str) -> Option<Role> {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match service {
        "hutch.v1.Nodes" if method == "Join" => None,
        "hutch.v1.Nodes" => Some(Role::Node),
        "hutch.v1.Controller" | "hutch.v1.Agent" => {
            let reads = ["Get", "List", "Watch"]
                .iter()
                .any(|p| method.starts_with(p))
                || ["ContainerLogs", "ContainerStats", "Events", "NodeInfo"].contains(&method);
            Some(if reads { Role::ReadOnly } else { Role::Admin })
        }
        // Health and reflection.
        _ => None,
    }
}

/// Who may call a daemon.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// Bearer tokens, when the daemon has a tokens file.
    pub tokens: Option<Arc<Tokens>>,
    /// Let a caller with neither a token nor a certificate in (a plaintext daemon without a
    /// tokens file: the loopback quick start).
    pub open: bool,
    /// `Nodes` calls need a node certificate (a controller serving TLS).
    pub nodes_need_certificate: bool,
}

impl Policy {
    /// An agent's: over TLS, only the controller's certificate and tokens of the file.
    pub fn agent(tokens: Option<Arc<Tokens>>, tls: bool) -> Policy {
        Policy {
            open: tokens.is_none() && !tls,
            tokens,
            nodes_need_certificate: false,
        }
    }

    /// A controller's: clients by token (all of them without a tokens file), agents by node
    /// certificate when it serves TLS.
    pub fn controller(tokens: Option<Arc<Tokens>>, tls: bool) -> Policy {
        Policy {
            open: tokens.is_none(),
            tokens,
            nodes_need_certificate: tls,
        }
    }
}

/// Whether a call to `path` by `peer` (a certificate, over TLS) with `authorization` may go
/// on, and the cluster identity the caller proved (its certificate's, or the node a node
/// token names), which the handlers check names against. Pure: the whole policy.
pub fn authorize(
    policy: &Policy,
    peer: Option<&Peer>,
    authorization: Option<&str>,
    path: &str,
) -> Result<Option<Peer>, Status> {
    let Some(needed) = needed_role(path) else {
        return Ok(peer.cloned());
    };
    if needed == Role::Node && policy.nodes_need_certificate && !matches!(peer, Some(Peer::Node(_)))
    {
        return Err(Status::unauthenticated(
            "this controller registers agents by the node certificate they get when they join: start the agent with `hutch-agent serve --join TOKEN` (a token from `hutch token create`)",
        ));
    }
    let (who, role, proven) = match peer {
        Some(p @ Peer::Controller) => (p.describe(), Role::Admin, Some(p.clone())),
        Some(p @ Peer::Node(_)) => (p.describe(), Role::Node, Some(p.clone())),
        None => match (&policy.tokens, authorization) {
            (Some(tokens), Some(header)) => {
                let (name, role) = token_role(tokens, header)?;
                let proven = (role == Role::Node).then(|| Peer::Node(name.clone()));
                (format!("token '{name}'"), role, proven)
            }
            _ if policy.open => return Ok(None),
            (Some(_), None) => {
                return Err(Status::unauthenticated(
                    "this server requires a bearer token: send 'authorization: Bearer TOKEN' (hutch --token, HUTCH_TOKEN; grpcurl -H)",
                ))
            }
            (None, _) => {
                return Err(Status::unauthenticated(
                    "this agent takes calls from its controller's certificate only (it has no tokens file for local administrators: start it with --tokens-file to add some)",
                ))
            }
        },
    };
    if role == Role::Admin || role == needed {
        return Ok(proven);
    }
    let method = path.rsplit('/').next().unwrap_or(path);
    let what = match needed {
        Role::Admin => "an admin",
        Role::ReadOnly => "a read-only or admin",
        Role::Node => "a node or admin",
    };
    Err(Status::permission_denied(format!(
        "{who} ({}) may not call {method}: it needs {what} credential",
        role.name()
    )))
}

/// The token of an `authorization: Bearer TOKEN` header; the scheme is case-insensitive
/// (RFC 7235), so `bearer TOKEN` is the same header.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The caller's name and role for an `authorization` header.
fn token_role(tokens: &Tokens, header: &str) -> Result<(String, Role), Status> {
    let Some(token) = bearer_token(header) else {
        return Err(Status::unauthenticated(
            "the authorization header must be 'Bearer TOKEN'",
        ));
    };
    let Some((name, role)) = tokens.by_token.get(token) else {
        return Err(Status::unauthenticated("unknown token"));
    };
    Ok((name.clone(), *role))
}

/// The cluster certificate a TLS caller presented, if any.
fn peer_of(request: &http::Request<Body>) -> Option<Peer> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certs = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    Peer::of_certificate(certs.first()?)
}

/// A gRPC service behind [`authorize`]. The caller's [`Peer`], when it presented a
/// certificate, goes into the request's extensions.
#[derive(Clone)]
pub struct Authed<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> Authed<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, policy: Arc<Policy>) -> Self {
        Authed { inner, policy }
    }
}

impl<S: NamedService> NamedService for Authed<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Authed<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let peer = peer_of(&request);
        let header = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match authorize(&self.policy, peer.as_ref(), header, request.uri().path()) {
            Err(status) => {
                tracing::info!(path = %request.uri().path(), code = ?status.code(), "refused: {}", status.message());
                return Box::pin(async move { Ok(status.into_http()) });
            }
            Ok(Some(proven)) => {
                request.extensions_mut().insert(proven);
            }
            Ok(None) => {}
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# token,name,role\n\
        aaaaaaaaaaaaaaaaaaaaaaaa,ops,admin\n\
        bbbbbbbbbbbbbbbbbbbbbbbb,viewer,read-only\n\
        cccccccccccccccccccccccc,agents,node\n";

    #[test]
    fn roles_decide_by_method() {
        let t = Policy::controller(Some(Arc::new(Tokens::parse(FILE).expect("parse"))), false);
        let call = |token: &str, path: &str| {
            authorize(&t, None, Some(&format!("Bearer {token}")), path)
                .map(drop)
                .map_err(|s| s.code())
        };
        let create = "/hutch.v1.Controller/CreateContainer";
        let list = "/hutch.v1.Controller/ListContainers";
        let register = "/hutch.v1.Nodes/Register";
        assert_eq!(call(&"a".repeat(24), create), Ok(()));
        assert_eq!(call(&"b".repeat(24), list), Ok(()));
        assert_eq!(
            call(&"b".repeat(24), create),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            call(&"b".repeat(24), "/hutch.v1.Controller/KillContainer"),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(call(&"c".repeat(24), register), Ok(()));
        assert_eq!(
            call(&"c".repeat(24), list),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            call("nope-nope-nope-nope", list),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            authorize(&t, None, None, list)
                .map(drop)
                .map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        assert!(authorize(&t, None, None, "/grpc.health.v1.Health/Check").is_ok());
        assert_eq!(
            call(&"b".repeat(24), "/hutch.v1.Agent/RunContainer"),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(call(&"b".repeat(24), "/hutch.v1.Agent/Events"), Ok(()));
        assert_eq!(
            call(&"a".repeat(24), "/hutch.v1.Agent/RunContainer"),
            Ok(())
        );
    }

    #[test]
    fn a_node_token_proves_the_node_it_names() {
        let t = Policy::controller(Some(Arc::new(Tokens::parse(FILE).expect("parse"))), false);
        let register = "/hutch.v1.Nodes/Register";
        let as_node = |header: &str| authorize(&t, None, Some(header), register);
        let c = "c".repeat(24);
        assert_eq!(
            as_node(&format!("Bearer {c}")).expect("node token"),
            Some(Peer::Node("agents".into()))
        );
        // The scheme is case-insensitive (RFC 7235); the token is not.
        assert!(as_node(&format!("bearer {c}")).is_ok());
        assert!(as_node(&format!("BEARER  {c}")).is_ok());
        assert!(as_node(&format!("Bearer {}", "C".repeat(24))).is_err());
        assert!(as_node(&format!("Bearer{c}")).is_err());
        // An admin token proves no node: the handlers let it act for any.
        let a = "a".repeat(24);
        assert_eq!(as_node(&format!("Bearer {a}")).expect("admin"), None);
    }

    #[test]
    fn certificates_decide_over_tls() {
        let tokens = Some(Arc::new(Tokens::parse(FILE).expect("parse")));
        let controller = Peer::Controller;
        let node = Peer::Node("n1".into());
        let code = |policy: &Policy, peer: Option<&Peer>, token: Option<&str>, path: &str| {
            let header = token.map(|t| format!("Bearer {t}"));
            authorize(policy, peer, header.as_deref(), path)
                .map(drop)
                .map_err(|s| s.code())
        };
        let run = "/hutch.v1.Agent/RunContainer";
        // An agent over TLS without a tokens file obeys its controller only.
        let agent = Policy::agent(None, true);
        assert_eq!(code(&agent, Some(&controller), None, run), Ok(()));
        assert_eq!(
            code(&agent, None, None, run),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(&agent, Some(&node), None, run),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(&agent, None, Some(&"a".repeat(24)), run),
            Err(tonic::Code::Unauthenticated)
        );
        // With a tokens file, local administrators come in by token.
        let agent = Policy::agent(tokens.clone(), true);
        assert_eq!(code(&agent, None, Some(&"a".repeat(24)), run), Ok(()));
        // A plaintext agent without tokens stays open (loopback only).
        assert_eq!(code(&Policy::agent(None, false), None, None, run), Ok(()));
        // A TLS controller registers agents by node certificate, never by token alone.
        let ctl = Policy::controller(tokens, true);
        let register = "/hutch.v1.Nodes/Register";
        assert_eq!(code(&ctl, Some(&node), None, register), Ok(()));
        assert_eq!(
            code(&ctl, None, Some(&"c".repeat(24)), register),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(
                &ctl,
                Some(&node),
                None,
                "/hutch.v1.Controller/ListContainers"
            ),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(code(&ctl, None, None, "/hutch.v1.Nodes/Join"), Ok(()));
        assert_eq!(
            code(&ctl, None, None, "/hutch.v1.Controller/CreateJoinToken"),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(
                &ctl,
                None,
                Some(&"b".repeat(24)),
                "/hutch.v1.Controller/CreateJoinToken"
            ),
            Err(tonic::Code::PermissionDenied)
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        assert!(Tokens::parse("short,x,admin")
            .expect_err("refused")
            .contains("line 1"));
        assert!(Tokens::parse("aaaaaaaaaaaaaaaaaaaa,x,root")
            .expect_err("refused")
            .contains("unknown role"));
        assert!(Tokens::parse("aaaaaaaaaaaaaaaaaaaa,x")
            .expect_err("refused")
            .contains("TOKEN,NAME,ROLE"));
        assert!(Tokens::parse("# nothing\n").is_err());
    }
}
