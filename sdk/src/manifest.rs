//! Service files: TOML that people keep in git and give to `hutch apply -f`.
//!
//! ```toml
//! [[service]]
//! name = "web"
//! replicas = 3
//! rootfs = "debian"
//! command = ["python3", "-m", "http.server", "80"]
//! memory = "64M"
//! env = { GREETING = "hello" }
//! health = { cmd = "test -e /tmp/ready", interval = "2s" }
//! placement = { selector = { disk = "ssd" }, spread-by = "zone" }
//! update = { max-unavailable = 1, max-surge = 0, min-ready = "2s", progress-deadline = "1m" }
//! ```
//!
//! Each `[[service]]` table is one service. Its container keys are `hutch run`'s flags by
//! their long names. Every error names its line and column; nothing is sent until the
//! whole file reads.

use std::collections::BTreeMap;
use std::fmt;

use hutch_proto::v1;
use serde::Deserialize;
use toml::Spanned;

use crate::spec::ContainerSpec;

/// What is wrong with a service file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ManifestError {}

/// A service read from a file, with where its table starts (to place the controller's
/// errors).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDecl {
    /// The request to send.
    pub request: v1::CreateServiceRequest,
    /// The line of its `name`.
    pub line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    service: Option<Vec<Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Entry {
    name: Spanned<String>,
    replicas: Spanned<i64>,
    rootfs: Spanned<String>,
    #[serde(default)]
    command: Vec<String>,
    entrypoint: Option<Vec<String>>,
    memory: Option<Spanned<String>>,
    cpus: Option<Spanned<String>>,
    cpu_shares: Option<u32>,
    namespaces: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    #[serde(default)]
    publish: Vec<Spanned<String>>,
    #[serde(default)]
    volumes: Vec<Spanned<String>>,
    #[serde(default)]
    mounts: Vec<Spanned<String>>,
    #[serde(default)]
    tmpfs: Vec<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    workdir: Option<String>,
    user: Option<Spanned<String>>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    cap_add: Vec<String>,
    #[serde(default)]
    cap_drop: Vec<String>,
    pids_limit: Option<u32>,
    #[serde(default)]
    privileged: bool,
    stop_grace: Option<Spanned<String>>,
    health: Option<Health>,
    placement: Option<Placement>,
    update: Option<Update>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Health {
    cmd: String,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    start_period: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Placement {
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    spread_by: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Update {
    max_unavailable: Option<Spanned<i64>>,
    max_surge: Option<Spanned<i64>>,
    min_ready: Option<Spanned<String>>,
    progress_deadline: Option<Spanned<String>>,
}

/// Reads a service file.
pub fn parse(text: &str) -> Result<Vec<ServiceDecl>, ManifestError> {
    let at = |offset: usize, message: String| {
        let (line, column) = line_column(text, offset);
        ManifestError {
            line,
            column,
            message,
        }
    };
    let file: File = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        at(offset, e.message().trim().to_string())
    })?;
    let entries = file.service.unwrap_or_default();
    if entries.is_empty() {
        return Err(at(
            0,
            "no services: declare each in a [[service]] table (name, replicas, rootfs, command)"
                .into(),
        ));
    }
    let mut names = BTreeMap::new();
    let mut out = Vec::new();
    for entry in entries {
        let start = entry.name.span().start;
        if let Some(first) = names.insert(entry.name.get_ref().clone(), start) {
            let (line, _) = line_column(text, first);
            return Err(at(
                start,
                format!(
                    "service '{}' is declared twice (first on line {line})",
                    entry.name.get_ref()
                ),
            ));
        }
        let request = to_request(entry).map_err(|(offset, m)| at(offset, m))?;
        out.push(ServiceDecl {
            request,
            line: line_column(text, start).0,
        });
    }
    Ok(out)
}

/// A problem at a byte offset.
type Located<T> = Result<T, (usize, String)>;

fn to_request(e: Entry) -> Located<v1::CreateServiceRequest> {
    let name_at = e.name.span().start;
    let replicas = u32::try_from(*e.replicas.get_ref()).map_err(|_| {
        (
            e.replicas.span().start,
            format!(
                "replicas: {} is not a count of replicas (0 or more)",
                e.replicas.get_ref(),
            ),
        )
    })?;
    let mut spec = ContainerSpec::new(e.rootfs.get_ref().clone()).command(e.command);
    if let Some(argv) = e.entrypoint {
        spec = spec.entrypoint(argv);
    }
    let checked = |spec: ContainerSpec, at: usize| -> Located<ContainerSpec> {
        match spec.problem() {
            Some(p) => Err((at, p.to_string())),
            None => Ok(spec),
        }
    };
    if let Some(m) = &e.memory {
        spec = checked(spec.memory(m.get_ref()), m.span().start)?;
    }
    if let Some(c) = &e.cpus {
        hutch_core::cpu::parse_cores(c.get_ref())
            .map_err(|err| (c.span().start, format!("cpus: {err}")))?;
        spec = spec.cpus(c.get_ref());
    }
    if let Some(shares) = e.cpu_shares {
        spec = checked(spec.cpu_shares(shares), name_at)?;
    }
    if let Some(ns) = &e.namespaces {
        let list = crate::spec::parse_namespaces(ns.get_ref())
            .map_err(|err| (ns.span().start, format!("namespaces: {err}")))?;
        spec = spec.namespaces(list);
    }
    if let Some(mode) = &e.network {
        let parsed = mode
            .get_ref()
            .parse::<hutch_core::network::NetworkMode>()
            .map_err(|err| (mode.span().start, format!("network: {err}")))?;
        spec = spec.network(parsed);
    }
    for p in &e.publish {
        spec = checked(spec.publish(p.get_ref()), p.span().start)?;
    }
    for v in &e.volumes {
        spec = checked(spec.volume(v.get_ref()), v.span().start)?;
    }
    for m in &e.mounts {
        spec = checked(spec.mount(m.get_ref()), m.span().start)?;
    }
    for t in &e.tmpfs {
        spec = checked(spec.tmpfs(t.get_ref()), t.span().start)?;
    }
    for (k, v) in e.env {
        spec = spec.env(k, v);
    }
    for (k, v) in e.labels {
        spec = spec.label(k, v);
    }
    if let Some(dir) = e.workdir {
        spec = spec.workdir(dir);
    }
    if let Some(user) = &e.user {
        spec = checked(with_user(spec, user.get_ref()), user.span().start)?;
    }
    if e.read_only {
        spec = spec.read_only();
    }
    for c in e.cap_add {
        spec = spec.cap_add(c);
    }
    for c in e.cap_drop {
        spec = spec.cap_drop(c);
    }
    if let Some(limit) = e.pids_limit {
        spec = spec.pids_limit(limit);
    }
    if e.privileged {
        spec = spec.privileged();
    }
    if let Some(grace) = &e.stop_grace {
        let secs = seconds("stop-grace", grace)?;
        spec = spec.stop_grace(secs);
    }
    if let Some(h) = e.health {
        let ms = |field: &str, v: &Option<Spanned<String>>| -> Located<u32> {
            match v {
                None => Ok(0),
                Some(v) => duration_ms(field, v),
            }
        };
        spec = spec.health(v1::HealthCheck {
            command: vec!["/bin/sh".into(), "-c".into(), h.cmd],
            interval_ms: ms("health.interval", &h.interval)?,
            timeout_ms: ms("health.timeout", &h.timeout)?,
            retries: h.retries.unwrap_or(0),
            start_period_ms: ms("health.start-period", &h.start_period)?,
        });
    }
    let template = spec
        .to_request()
        .map_err(|err| (name_at, err.to_string()))?
        .spec;
    let placement = e.placement.map(|p| v1::ServicePlacement {
        node_selector: p.selector.into_iter().collect(),
        spread_by: p.spread_by,
    });
    let update = match e.update {
        None => None,
        Some(u) => Some(v1::UpdateStrategy {
            max_unavailable: u
                .max_unavailable
                .as_ref()
                .map(|v| count("update.max-unavailable", v))
                .transpose()?,
            max_surge: u
                .max_surge
                .as_ref()
                .map(|v| count("update.max-surge", v))
                .transpose()?,
            min_ready_seconds: u
                .min_ready
                .as_ref()
                .map(|v| seconds("update.min-ready", v))
                .transpose()?,
            progress_deadline_seconds: u
                .progress_deadline
                .as_ref()
                .map(|v| seconds("update.progress-deadline", v))
                .transpose()?,
        }),
    };
    Ok(v1::CreateServiceRequest {
        name: e.name.into_inner(),
        spec: Some(v1::ServiceSpec {
            template,
            replicas,
            placement,
            update,
        }),
    })
}

/// `UID[:GID]` in numbers, or a user name looked up in the rootfs.
fn with_user(spec: ContainerSpec, text: &str) -> ContainerSpec {
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    match (user.parse::<u32>(), group.map(str::parse::<u32>)) {
        (Ok(uid), None) => spec.user(uid, None),
        (Ok(uid), Some(Ok(gid))) => spec.user(uid, Some(gid)),
        _ => spec.user_name(text),
    }
}

fn count(field: &str, v: &Spanned<i64>) -> Located<u32> {
    u32::try_from(*v.get_ref()).map_err(|_| {
        (
            v.span().start,
            format!("{field}: {} is not a count (0 or more)", v.get_ref()),
        )
    })
}

fn duration(field: &str, v: &Spanned<String>) -> Located<std::time::Duration> {
    humantime::parse_duration(v.get_ref()).map_err(|_| {
        (
            v.span().start,
            format!(
                "{field}: '{}' is not a duration such as 5s or 1m30s",
                v.get_ref()
            ),
        )
    })
}

fn duration_ms(field: &str, v: &Spanned<String>) -> Located<u32> {
    let d = duration(field, v)?;
    u32::try_from(d.as_millis()).map_err(|_| (v.span().start, format!("{field}: too long")))
}

fn seconds(field: &str, v: &Spanned<String>) -> Located<u32> {
    let d = duration(field, v)?;
    if d.subsec_nanos() != 0 {
        return Err((
            v.span().start,
            format!(
                "{field}: '{}' is not a whole number of seconds",
                v.get_ref()
            ),
        ));
    }
    u32::try_from(d.as_secs()).map_err(|_| (v.span().start, format!("{field}: too long")))
}

/// The 1-based line and column of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[service]]
name = "web"
replicas = 3
rootfs = "debian"
command = ["sleep", "600"]
memory = "64M"
env = { A = "1" }
health = { cmd = "true", interval = "2s" }
placement = { selector = { disk = "ssd" }, spread-by = "zone" }
update = { max-unavailable = 1, max-surge = 0, min-ready = "2s", progress-deadline = "1m" }

[[service]]
name = "db"
replicas = 1
rootfs = "debian"
command = ["sleep", "600"]
"#;

    fn err(text: &str) -> ManifestError {
        parse(text).expect_err("refused")
    }

    #[test]
    fn a_good_file_reads_whole() {
        let decls = parse(GOOD).expect("parsed");
        assert_eq!(decls.len(), 2);
        assert_eq!(decls[0].line, 3);
        assert_eq!(decls[1].line, 14);
        let web = decls[0].request.spec.clone().expect("spec");
        assert_eq!(web.replicas, 3);
        let t = web.template.expect("template");
        assert_eq!(t.memory_limit_bytes, Some(64 << 20));
        assert_eq!(t.health.map(|h| h.interval_ms), Some(2000));
        let u = web.update.expect("update");
        assert_eq!((u.max_unavailable, u.max_surge), (Some(1), Some(0)));
        assert_eq!(
            (u.min_ready_seconds, u.progress_deadline_seconds),
            (Some(2), Some(60))
        );
        assert_eq!(web.placement.map(|p| p.spread_by), Some("zone".into()));
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = err("[[service]]\nname = \"web\"\nreplicas = \n");
        assert_eq!(e.line, 3, "{e}");

        let e = err("[[service]]\nname = \"web\"\nreplicas = 1\nrootfs = \"debian\"\ncommand = [\"true\"]\ncolour = \"red\"\n");
        assert_eq!((e.line, e.column), (6, 1), "{e}");
        assert!(e.message.contains("unknown field `colour`"), "{e}");

        let e = err("[[service]]\nname = \"web\"\nreplicas = -1\nrootfs = \"debian\"\n");
        assert_eq!((e.line, e.column), (3, 12), "{e}");
        assert!(e.message.contains("replicas: -1"), "{e}");

        let e = err(
            "[[service]]\nname = \"web\"\nreplicas = 1\nrootfs = \"debian\"\nmemory = \"12Q\"\n",
        );
        assert_eq!((e.line, e.column), (5, 10), "{e}");
        assert!(e.message.starts_with("memory:"), "{e}");

        let e = err("[[service]]\nname = \"web\"\nreplicas = 1\nrootfs = \"debian\"\nupdate = { min-ready = \"soon\" }\n");
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("update.min-ready"), "{e}");
        let e = err("[[service]]\nname = \"web\"\nreplicas = 1\nrootfs = \"debian\"\nupdate = { min-ready = \"500ms\" }\n");
        assert!(e.message.contains("not a whole number of seconds"), "{e}");

        let twice = "[[service]]\nname = \"a\"\nreplicas = 1\nrootfs = \"d\"\n[[service]]\nname = \"a\"\nreplicas = 1\nrootfs = \"d\"\n";
        let e = err(twice);
        assert_eq!(e.line, 6, "{e}");
        assert!(
            e.message.contains("declared twice (first on line 2)"),
            "{e}"
        );

        assert!(err("").message.starts_with("no services"));
        assert!(err("[[service]]\nname = \"web\"\n")
            .message
            .contains("missing field `replicas`"));
    }
}
