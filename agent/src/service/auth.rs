//! Bearer-token authentication with roles, as a tower service wrapped around each gRPC
//! service of both daemons.
//!
//! Tokens come from a static file (`tokens_file`), one `TOKEN,NAME,ROLE` per line, as
//! Kubernetes' static token file: `admin` may do everything, `read-only` may get, list,
//! watch and read logs and events, `node` may only register and heartbeat at a controller
//! (what agents send). An agent's tokens file names who may drive it: the controller (its
//! `agent_token`) and local administrators. Without a tokens file every call is let through
//! (the loopback quick start). Health checks and reflection stay open: they reveal only the
//! API's shape.

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
/// needs no token at all.
fn needed_role(path: &str) -> Option<Role> {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (service, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match service {
        "hutch.v1.Nodes" => Some(Role::Node),
        "hutch.v1.Controller" | "hutch.v1.Agent" => {
            let reads = ["Get", "List", "Watch"]
                .iter()
                .any(|p| method.starts_with(p))
                || ["ContainerLogs", "Events", "NodeInfo"].contains(&method);
            Some(if reads { Role::ReadOnly } else { Role::Admin })
        }
        // Health and reflection.
        _ => None,
    }
}

/// Whether a call to `path` with `authorization` may go on. Pure: the whole policy.
pub fn authorize(tokens: &Tokens, authorization: Option<&str>, path: &str) -> Result<(), Status> {
    let Some(needed) = needed_role(path) else {
        return Ok(());
    };
    let Some(header) = authorization else {
        return Err(Status::unauthenticated(
            "this server requires a bearer token: send 'authorization: Bearer TOKEN' (hutch --token, HUTCH_TOKEN; grpcurl -H)",
        ));
    };
    let Some(token) = header.strip_prefix("Bearer ") else {
        return Err(Status::unauthenticated(
            "the authorization header must be 'Bearer TOKEN'",
        ));
    };
    let Some((name, role)) = tokens.by_token.get(token.trim()) else {
        return Err(Status::unauthenticated("unknown token"));
    };
    let allowed = *role == Role::Admin || *role == needed;
    if allowed {
        return Ok(());
    }
    let method = path.rsplit('/').next().unwrap_or(path);
    let what = match needed {
        Role::Admin => "an admin",
        Role::ReadOnly => "a read-only or admin",
        Role::Node => "a node or admin",
    };
    Err(Status::permission_denied(format!(
        "token '{name}' ({}) may not call {method}: it needs {what} token",
        role.name()
    )))
}

/// A gRPC service behind [`authorize`].
#[derive(Clone)]
pub struct Authed<S> {
    inner: S,
    tokens: Option<Arc<Tokens>>,
}

impl<S> Authed<S> {
    /// Wraps `inner`; with `tokens` `None` every call goes through.
    pub fn new(inner: S, tokens: Option<Arc<Tokens>>) -> Self {
        Authed { inner, tokens }
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

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if let Some(tokens) = &self.tokens {
            let header = request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if let Err(status) = authorize(tokens, header, request.uri().path()) {
                tracing::info!(path = %request.uri().path(), code = ?status.code(), "refused: {}", status.message());
                return Box::pin(async move { Ok(status.into_http()) });
            }
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
        let t = Tokens::parse(FILE).expect("parse");
        let call = |token: &str, path: &str| {
            authorize(&t, Some(&format!("Bearer {token}")), path).map_err(|s| s.code())
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
            authorize(&t, None, list).map_err(|s| s.code()),
            Err(tonic::Code::Unauthenticated)
        );
        assert!(authorize(&t, None, "/grpc.health.v1.Health/Check").is_ok());
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
