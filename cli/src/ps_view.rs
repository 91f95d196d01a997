//! `hutch ps --filter` and `--format`, as Docker spells them: filters `status=STATE`,
//! `name=TEXT` (a part of the name), `node=NAME`, `label=KEY[=VALUE]`, `health=STATE`
//! (several values of one key are alternatives, keys must all match); a format is a text
//! with `{{.ID}}`, `{{.Names}}`, `{{.Node}}`, `{{.State}}`, `{{.Status}}`, `{{.Image}}`,
//! `{{.Command}}`, `{{.CreatedAt}}`, `{{.IP}}`, `{{.Health}}`, `{{.Labels}}`, and `\t`
//! for a tab. Pure.

use hutch::proto as v1;

use crate::output;

/// One `--filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Filter {
    /// `status=`.
    State(String),
    /// `name=`: a part of the name.
    Name(String),
    /// `node=`.
    Node(String),
    /// `label=KEY` or `label=KEY=VALUE`.
    Label(String, Option<String>),
    /// `health=`.
    Health(String),
}

impl Filter {
    fn key(&self) -> &'static str {
        match self {
            Filter::State(_) => "status",
            Filter::Name(_) => "name",
            Filter::Node(_) => "node",
            Filter::Label(..) => "label",
            Filter::Health(_) => "health",
        }
    }

    fn matches(&self, c: &v1::Container) -> bool {
        match self {
            Filter::State(s) => output::state_name(c.state) == *s,
            Filter::Name(n) => c.name.contains(n.as_str()),
            Filter::Node(n) => c.node == *n,
            Filter::Label(k, v) => {
                let labels = c.spec.as_ref().map(|s| &s.labels);
                match (labels.and_then(|l| l.get(k)), v) {
                    (Some(have), Some(want)) => have == want,
                    (Some(_), None) => true,
                    (None, _) => false,
                }
            }
            Filter::Health(h) => output::health_name(c).as_deref() == Some(h.as_str()),
        }
    }
}

const STATES: [&str; 8] = [
    "pending",
    "scheduled",
    "preparing",
    "running",
    "exited",
    "oom_killed",
    "failed",
    "lost",
];

/// Parses `--filter KEY=VALUE`.
pub(crate) fn parse_filter(text: &str) -> Result<Filter, String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("--filter {text}: give KEY=VALUE, e.g. status=exited"))?;
    match key {
        "status" | "state" => {
            if STATES.contains(&value) {
                Ok(Filter::State(value.to_string()))
            } else {
                Err(format!(
                    "--filter {text}: status is one of {}",
                    STATES.join(", ")
                ))
            }
        }
        "name" => Ok(Filter::Name(value.to_string())),
        "node" => Ok(Filter::Node(value.to_string())),
        "label" => Ok(match value.split_once('=') {
            Some((k, v)) => Filter::Label(k.to_string(), Some(v.to_string())),
            None => Filter::Label(value.to_string(), None),
        }),
        "health" => {
            if ["starting", "healthy", "unhealthy"].contains(&value) {
                Ok(Filter::Health(value.to_string()))
            } else {
                Err(format!(
                    "--filter {text}: health is starting, healthy or unhealthy"
                ))
            }
        }
        other => Err(format!(
            "--filter {other}=...: filter by status, name, node, label or health"
        )),
    }
}

/// Whether `c` passes `filters`: every key matches, any value of a key does.
pub(crate) fn passes(filters: &[Filter], c: &v1::Container) -> bool {
    let mut keys: Vec<&str> = filters.iter().map(Filter::key).collect();
    keys.dedup();
    keys.iter().all(|key| {
        filters
            .iter()
            .filter(|f| f.key() == *key)
            .any(|f| f.matches(c))
    })
}

const FIELDS: [&str; 11] = [
    "ID",
    "Names",
    "Node",
    "State",
    "Status",
    "Image",
    "Command",
    "CreatedAt",
    "IP",
    "Health",
    "Labels",
];

fn field(c: &v1::Container, name: &str) -> String {
    let spec = c.spec.clone().unwrap_or_default();
    match name {
        "ID" | "Names" | "Name" => c.name.clone(),
        "Node" => c.node.clone(),
        "State" => output::state_name(c.state),
        "Status" => c.status_message.clone(),
        "Image" | "Rootfs" => spec.rootfs,
        "Command" => spec.command.join(" "),
        "CreatedAt" => output::rfc3339(&c.created_at).unwrap_or_default(),
        "IP" => c.network.as_ref().map(|n| n.ip.clone()).unwrap_or_default(),
        "Health" => output::health_name(c).unwrap_or_default(),
        "Labels" => {
            let mut l: Vec<String> = spec
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            l.sort();
            l.join(",")
        }
        _ => String::new(),
    }
}

/// Checks a `--format` text: every `{{.Field}}` is known.
pub(crate) fn check_format(format: &str) -> Result<(), String> {
    let mut rest = format;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("--format: '{{{{' without '}}}}' in {format}"))?;
        let name = after[..end].trim();
        let known = name
            .strip_prefix('.')
            .is_some_and(|f| FIELDS.contains(&f) || f == "Name" || f == "Rootfs");
        if !known {
            return Err(format!(
                "--format: unknown field '{name}': use {}",
                FIELDS.map(|f| format!("{{{{.{f}}}}}")).join(", ")
            ));
        }
        rest = &after[end + 2..];
    }
    Ok(())
}

/// `c` rendered through a checked `format`.
pub(crate) fn render(format: &str, c: &v1::Container) -> String {
    let mut out = String::new();
    let mut rest = format;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim().trim_start_matches('.');
        out.push_str(&field(c, name));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out.replace("\\t", "\t")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, state: v1::ContainerState, labels: &[(&str, &str)]) -> v1::Container {
        v1::Container {
            name: name.into(),
            node: "n1".into(),
            state: state as i32,
            spec: Some(v1::ContainerSpec {
                rootfs: "debian".into(),
                command: vec!["sleep".into(), "1".into()],
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn filters_as_docker_combines_them() {
        let web = container("web-1", v1::ContainerState::Running, &[("tier", "front")]);
        let db = container("db", v1::ContainerState::Exited, &[]);
        let f = |texts: &[&str]| -> Vec<Filter> {
            texts
                .iter()
                .map(|t| parse_filter(t).expect("filter"))
                .collect()
        };
        assert!(passes(&f(&["status=running"]), &web));
        assert!(!passes(&f(&["status=running"]), &db));
        assert!(
            passes(&f(&["status=running", "status=exited"]), &db),
            "values of a key: any"
        );
        assert!(
            !passes(&f(&["status=exited", "name=web"]), &web),
            "keys: all"
        );
        assert!(passes(
            &f(&["name=web", "label=tier=front", "node=n1"]),
            &web
        ));
        assert!(passes(&f(&["label=tier"]), &web));
        assert!(!passes(&f(&["label=tier=back"]), &web));
        for bad in ["status=asleep", "colour=red", "health=meh", "nothing"] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_with_fields() {
        let web = container(
            "web",
            v1::ContainerState::Running,
            &[("b", "2"), ("a", "1")],
        );
        assert_eq!(render("{{.ID}}\\t{{.State}}", &web), "web\trunning");
        assert_eq!(
            render("{{ .Image }}: {{.Command}} [{{.Labels}}]", &web),
            "debian: sleep 1 [a=1,b=2]"
        );
        assert!(check_format("{{.ID}} {{.Names}}").is_ok());
        assert!(check_format("{{.Nope}}").is_err());
        assert!(check_format("{{.ID").is_err());
    }
}
