//! A service's declaration: its checks (every error names the field), the defaults of its
//! update strategy, the spec its replicas get, and the difference between two versions
//! (what `apply --dry-run` shows).

use std::time::Duration;

use hutch_core::convert::spec_from;
use hutch_core::names::validate_name;
use hutch_proto::v1;

use super::plan::Strategy;
use crate::cluster::network::resolvable_name;

/// The label naming a replica's service.
pub const SERVICE_LABEL: &str = "hutch.service";
/// The label carrying the template revision a replica runs.
pub const REVISION_LABEL: &str = "hutch.service.revision";
/// Longest service name: its replicas' names (`NAME-REVISION-XXXXX`) must fit a container
/// name.
pub const MAX_SERVICE_NAME_LEN: usize = 32;
/// Most replicas a service may declare.
pub const MAX_REPLICAS: u32 = 10_000;
/// Longest `min_ready_seconds` and `progress_deadline_seconds`.
const MAX_GATE_SECONDS: u32 = 86_400;

/// The strategy's values when unset.
pub const DEFAULT_MAX_UNAVAILABLE: u32 = 0;
/// See [`DEFAULT_MAX_UNAVAILABLE`].
pub const DEFAULT_MAX_SURGE: u32 = 1;
/// See [`DEFAULT_MAX_UNAVAILABLE`].
pub const DEFAULT_MIN_READY_SECONDS: u32 = 1;
/// See [`DEFAULT_MAX_UNAVAILABLE`].
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u32 = 120;

/// Checks a service's name.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    validate_name("name", name).map_err(|e| e.to_string())?;
    if name.len() > MAX_SERVICE_NAME_LEN {
        return Err(format!(
            "name: '{name}' is {} characters long; a service name has at most {MAX_SERVICE_NAME_LEN}",
            name.len()
        ));
    }
    if !resolvable_name(name) || name.starts_with('-') || name.contains('_') {
        return Err(format!(
            "name: '{name}' cannot be resolved by containers; use letters, digits and dashes (no dots, underscores or 'localhost')"
        ));
    }
    Ok(())
}

/// Checks a declaration; `image_rootfs` tells whether the template's rootfs gives a command.
/// Each error names the field.
pub fn validate(spec: &v1::ServiceSpec, image_rootfs: bool) -> Result<(), String> {
    let template = spec
        .template
        .clone()
        .ok_or_else(|| "template: missing (what each replica runs)".to_string())?;
    let parsed = spec_from(template.clone()).map_err(|e| format!("template: {e}"))?;
    parsed.validate().map_err(|e| format!("template: {e}"))?;
    if parsed.command.is_empty()
        && parsed.entrypoint.as_ref().is_none_or(Vec::is_empty)
        && !image_rootfs
    {
        return Err(format!(
            "template: {}",
            hutch_core::spec::SpecError::EmptyCommand
        ));
    }
    if template.auto_remove {
        return Err("template.auto_remove: replicas are removed by their service; drop it".into());
    }
    if let Some(key) = template.labels.keys().find(|k| is_reserved_label(k)) {
        return Err(format!(
            "template.labels: '{key}' is set by hutch on every replica; choose another key"
        ));
    }
    if spec.replicas > MAX_REPLICAS {
        return Err(format!(
            "replicas: {} is more than the {MAX_REPLICAS} a service may have",
            spec.replicas
        ));
    }
    let placement = spec.placement.clone().unwrap_or_default();
    hutch_core::spec::validate_labels("placement.node_selector", placement.node_selector.iter())?;
    if placement.spread_by.len() > hutch_core::spec::MAX_LABEL_KEY_BYTES {
        return Err(format!(
            "placement.spread_by: a key of {} bytes; label keys have at most {}",
            placement.spread_by.len(),
            hutch_core::spec::MAX_LABEL_KEY_BYTES
        ));
    }
    let update = spec.update.unwrap_or_default();
    let s = strategy(&update);
    if s.max_unavailable == 0 && s.max_surge == 0 {
        return Err("update: max_unavailable and max_surge are both 0, so no replica could ever be replaced; allow one of them".into());
    }
    for (field, value) in [
        ("update.max_unavailable", update.max_unavailable),
        ("update.max_surge", update.max_surge),
    ] {
        if value.is_some_and(|v| v > MAX_REPLICAS) {
            return Err(format!(
                "{field}: {} is more than the {MAX_REPLICAS} replicas a service may have",
                value.unwrap_or(0)
            ));
        }
    }
    for (field, value) in [
        ("update.min_ready_seconds", update.min_ready_seconds),
        (
            "update.progress_deadline_seconds",
            update.progress_deadline_seconds,
        ),
    ] {
        if value.is_some_and(|v| v > MAX_GATE_SECONDS) {
            return Err(format!(
                "{field}: {} s is more than a day ({MAX_GATE_SECONDS} s)",
                value.unwrap_or(0)
            ));
        }
    }
    if update.progress_deadline_seconds == Some(0) {
        return Err("update.progress_deadline_seconds: 0 would pause every update at once; leave it unset for 120 s".into());
    }
    Ok(())
}

/// Whether a label key is hutch's own for replicas (a container or a template may not set
/// it: the reconciler counts containers by it).
pub fn is_reserved_label(key: &str) -> bool {
    key == SERVICE_LABEL || key.starts_with("hutch.service.")
}

/// The update strategy with its defaults.
pub fn strategy(update: &v1::UpdateStrategy) -> Strategy {
    Strategy {
        max_unavailable: update.max_unavailable.unwrap_or(DEFAULT_MAX_UNAVAILABLE),
        max_surge: update.max_surge.unwrap_or(DEFAULT_MAX_SURGE),
        min_ready: Duration::from_secs(u64::from(
            update
                .min_ready_seconds
                .unwrap_or(DEFAULT_MIN_READY_SECONDS),
        )),
        progress_deadline: Duration::from_secs(u64::from(
            update
                .progress_deadline_seconds
                .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS),
        )),
    }
}

/// What a replica of `service` at template `revision` is created with.
pub fn replica_request(
    service: &str,
    template: &v1::ContainerSpec,
    revision: u64,
    placement: &v1::ServicePlacement,
    name: String,
) -> v1::CreateContainerRequest {
    let mut spec = template.clone();
    spec.labels.insert(SERVICE_LABEL.into(), service.into());
    spec.labels
        .insert(REVISION_LABEL.into(), revision.to_string());
    v1::CreateContainerRequest {
        name,
        spec: Some(spec),
        placement: Some(v1::Placement {
            node: String::new(),
            node_selector: placement.node_selector.clone(),
            spread_by: if placement.spread_by.is_empty() {
                "node".into()
            } else {
                placement.spread_by.clone()
            },
        }),
        restart_policy: Some(v1::RestartPolicy {
            kind: v1::restart_policy::Kind::Always as i32,
            max_retries: 0,
        }),
    }
}

/// The service a container belongs to and the revision it runs, from its labels.
/// Both labels must be there: a container labelled only `hutch.service` (possible before
/// the label was reserved) is no replica.
pub fn replica_of(c: &v1::Container) -> Option<(&str, u64)> {
    let labels = &c.spec.as_ref()?.labels;
    let service = labels.get(SERVICE_LABEL)?;
    let revision = labels.get(REVISION_LABEL)?.parse().ok()?;
    Some((service.as_str(), revision))
}

/// What differs between two declarations, one `- old` / `+ new` line per changed line of
/// their printed form (empty: the same).
pub fn diff(old: &v1::ServiceSpec, new: &v1::ServiceSpec) -> Vec<String> {
    if old == new {
        return Vec::new();
    }
    let (a, b) = (printed(old), printed(new));
    // The diff's table is a.len() x b.len(): a template of thousands of arguments is only
    // said to differ.
    if a.len().saturating_mul(b.len()) > MAX_DIFF_CELLS {
        return vec!["~ the spec changed (too large to show line by line)".into()];
    }
    line_diff(&a, &b)
}

/// Largest line-by-line diff computed (lines of the old spec x lines of the new).
const MAX_DIFF_CELLS: usize = 1_000_000;

/// A declaration as lines, the same for equal declarations (maps sorted).
fn printed(spec: &v1::ServiceSpec) -> Vec<String> {
    let placement = spec.placement.clone().unwrap_or_default();
    let selector: std::collections::BTreeMap<_, _> = placement.node_selector.iter().collect();
    let update = spec.update.unwrap_or_default();
    let mut lines = vec![
        format!("replicas: {}", spec.replicas),
        format!("placement.node_selector: {selector:?}"),
        format!("placement.spread_by: {:?}", placement.spread_by),
        format!("update: {update:?}"),
    ];
    // The core spec keeps its maps sorted; the wire's are hash maps.
    let template = match spec.template.clone().map(spec_from) {
        Some(Ok(t)) => format!("{t:#?}"),
        other => format!("{other:#?}"),
    };
    lines.extend(template.lines().map(|l| format!("template: {}", l.trim())));
    lines
}

/// Lines of `a` missing from `b` (`- `) and of `b` missing from `a` (`+ `), in order, by
/// a longest common subsequence.
fn line_diff(a: &[String], b: &[String]) -> Vec<String> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &[&str], replicas: u32) -> v1::ServiceSpec {
        v1::ServiceSpec {
            template: Some(v1::ContainerSpec {
                rootfs: "debian".into(),
                command: command.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            replicas,
            ..Default::default()
        }
    }

    #[test]
    fn names_must_resolve_and_fit() {
        assert!(validate_service_name("web").is_ok());
        for bad in ["", "a.b", "localhost", "x_y", &"a".repeat(33), "-x"] {
            assert!(validate_service_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn declarations_are_checked_field_by_field() {
        assert_eq!(validate(&spec(&["true"], 3), false), Ok(()));
        let err = |s: &v1::ServiceSpec| validate(s, false).expect_err("refused");
        assert!(err(&v1::ServiceSpec::default()).starts_with("template: missing"));
        assert!(err(&spec(&[], 1)).starts_with("template:"));
        assert_eq!(validate(&spec(&[], 1), true), Ok(()));
        assert!(err(&spec(&["true"], MAX_REPLICAS + 1)).starts_with("replicas:"));
        let mut s = spec(&["true"], 1);
        s.update = Some(v1::UpdateStrategy {
            max_unavailable: Some(0),
            max_surge: Some(0),
            ..Default::default()
        });
        assert!(err(&s).starts_with("update: max_unavailable and max_surge"));
        s.update = Some(v1::UpdateStrategy {
            progress_deadline_seconds: Some(0),
            ..Default::default()
        });
        assert!(err(&s).starts_with("update.progress_deadline_seconds"));
        let mut s = spec(&["true"], 1);
        if let Some(t) = s.template.as_mut() {
            t.labels.insert(SERVICE_LABEL.into(), "other".into());
        }
        assert!(err(&s).contains("is set by hutch"));
        let mut s = spec(&["true"], 1);
        if let Some(t) = s.template.as_mut() {
            t.auto_remove = true;
        }
        assert!(err(&s).starts_with("template.auto_remove"));
    }

    #[test]
    fn replicas_carry_their_service_and_revision() {
        let s = spec(&["true"], 1);
        let req = replica_request(
            "web",
            s.template.as_ref().expect("template"),
            7,
            &v1::ServicePlacement::default(),
            "web-7-abcde".into(),
        );
        let c = v1::Container {
            spec: req.spec.clone(),
            ..Default::default()
        };
        assert_eq!(replica_of(&c), Some(("web", 7)));
        assert_eq!(req.placement.map(|p| p.spread_by), Some("node".into()));
    }

    #[test]
    fn diff_names_the_changed_lines() {
        assert!(diff(&spec(&["a"], 1), &spec(&["a"], 1)).is_empty());
        let d = diff(&spec(&["a"], 1), &spec(&["b"], 2));
        assert!(d.contains(&"- template: \"a\",".to_string()), "{d:?}");
        assert!(d.contains(&"+ template: \"b\",".to_string()), "{d:?}");
        assert!(d.contains(&"- replicas: 1".to_string()), "{d:?}");
        assert!(d.contains(&"+ replicas: 2".to_string()), "{d:?}");
    }
}
