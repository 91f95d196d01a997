//! Services: a declared number of replicas of one container template, kept running,
//! spread over the nodes, replaced in a rolling update when the template changes, and
//! reached by one name.
//!
//! A service is a record of its own (next to containers, numbered by the same revisions,
//! watched the same way). Its replicas are ordinary container records carrying the labels
//! [`spec::SERVICE_LABEL`] and [`spec::REVISION_LABEL`]; the [`reconcile`] loop keeps them
//! in step with the declaration using the pure [`plan`]. Nothing else about a rollout is
//! stored: after a restart or a failover the new leader sees the same records and carries
//! on, neither losing nor doubling replicas.

pub mod plan;
pub mod reconcile;
pub mod spec;

use std::time::SystemTime;

use hutch_core::convert::{system_time, timestamp};
use hutch_proto::v1::{self, ContainerState as S, WatchEventType};

use super::records::{is_final, state};
use super::{Change, Cluster, ClusterError, State};
use plan::{Desired, Replica};

impl Cluster {
    /// Records a new service (idempotent by name and spec).
    pub fn create_service(
        &self,
        req: v1::CreateServiceRequest,
    ) -> Result<v1::Service, ClusterError> {
        let spec = req
            .spec
            .ok_or_else(|| ClusterError::InvalidArgument("spec: missing".into()))?;
        self.check_declaration(&req.name, &spec)?;
        let mut st = self.lock();
        if let Some(existing) = st.services.get(&req.name) {
            return if existing.spec.as_ref() == Some(&spec) {
                Ok(with_status(&st, existing, SystemTime::now()))
            } else {
                Err(ClusterError::AlreadyExists(format!(
                    "service '{}' exists with another spec; update it (hutch apply) or delete it first",
                    req.name
                )))
            };
        }
        check_name_free(&st, &req.name)?;
        let record = self.declared(&st, None, &req.name, spec, &[])?;
        self.commit_service(&mut st, WatchEventType::Created, record)
    }

    /// A service with its status.
    pub fn get_service(&self, name: &str) -> Result<v1::Service, ClusterError> {
        let st = self.lock();
        let svc = st
            .services
            .get(name)
            .ok_or_else(|| service_not_found(name))?;
        Ok(with_status(&st, svc, SystemTime::now()))
    }

    /// Every service, by name, and the revision the list is current at.
    pub fn list_services(&self) -> (Vec<v1::Service>, u64) {
        let st = self.lock();
        let now = SystemTime::now();
        let list = st
            .services
            .values()
            .map(|s| with_status(&st, s, now))
            .collect();
        (list, st.revision)
    }

    /// Replaces a service's spec.
    pub fn update_service(
        &self,
        name: &str,
        spec: Option<v1::ServiceSpec>,
    ) -> Result<v1::Service, ClusterError> {
        let spec = spec.ok_or_else(|| ClusterError::InvalidArgument("spec: missing".into()))?;
        self.check_declaration(name, &spec)?;
        let mut st = self.lock();
        let existing = service_record(&st, name)?;
        if existing.spec.as_ref() == Some(&spec) {
            return Ok(with_status(&st, &existing, SystemTime::now()));
        }
        let record = self.declared(&st, Some(&existing), name, spec, &[])?;
        self.commit_service(&mut st, WatchEventType::Updated, record)
    }

    /// Changes only the replica count.
    pub fn scale_service(&self, name: &str, replicas: u32) -> Result<v1::Service, ClusterError> {
        if replicas > spec::MAX_REPLICAS {
            return Err(ClusterError::InvalidArgument(format!(
                "replicas: {replicas} is more than the {} a service may have",
                spec::MAX_REPLICAS
            )));
        }
        let mut st = self.lock();
        let mut record = service_record(&st, name)?;
        let spec = record.spec.get_or_insert_with(Default::default);
        if spec.replicas == replicas {
            return Ok(with_status(&st, &record, SystemTime::now()));
        }
        spec.replicas = replicas;
        self.commit_service(&mut st, WatchEventType::Updated, record)
    }

    /// Makes the previous template current again.
    pub fn rollback_service(&self, name: &str) -> Result<v1::Service, ClusterError> {
        let mut st = self.lock();
        let mut record = service_record(&st, name)?;
        let Some(previous) = record.previous.take() else {
            return Err(ClusterError::FailedPrecondition(format!(
                "service '{name}' has no previous template to roll back to (it was never updated)"
            )));
        };
        let spec = record.spec.get_or_insert_with(Default::default);
        record.previous = Some(v1::ServiceTemplate {
            revision: record.template_revision,
            template: spec.template.take(),
            placement: spec.placement.take(),
        });
        spec.template = previous.template;
        spec.placement = previous.placement;
        record.template_revision = previous.revision;
        record.status = Some(v1::ServiceStatus::default());
        tracing::info!(service = %name, revision = record.template_revision, "rolling back");
        self.commit_service(&mut st, WatchEventType::Updated, record)
    }

    /// Forgets a service; the reconciler retires its replicas.
    pub fn delete_service(&self, name: &str) -> Result<v1::Service, ClusterError> {
        let mut st = self.lock();
        let record = service_record(&st, name)?;
        let shown = with_status(&st, &record, SystemTime::now());
        // Its replicas are retired in the same commit: a service created again under the
        // name never counts them as its own.
        let mut changes = vec![Change::RemovedService(record)];
        for c in st
            .replicas
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|n| st.containers.get(n))
            .filter(|c| !c.stop_requested)
        {
            let mut c = c.clone();
            c.stop_requested = true;
            changes.push(Change::Container(WatchEventType::Updated, c));
        }
        self.commit(&mut st, changes)?;
        Ok(shown)
    }

    /// Creates or updates every service of `req` in one commit, or none; with `dry_run`
    /// only says what would change.
    pub fn apply_services(
        &self,
        req: v1::ApplyServicesRequest,
    ) -> Result<v1::ApplyServicesResponse, ClusterError> {
        let mut seen = std::collections::HashSet::new();
        for (i, s) in req.services.iter().enumerate() {
            let at = |e: ClusterError| match e {
                ClusterError::InvalidArgument(m) => {
                    ClusterError::InvalidArgument(format!("services[{i}] ({}): {m}", s.name))
                }
                other => other,
            };
            let spec = s.spec.as_ref().ok_or_else(|| {
                ClusterError::InvalidArgument(format!("services[{i}] ({}): spec: missing", s.name))
            })?;
            self.check_declaration(&s.name, spec).map_err(at)?;
            if !seen.insert(s.name.as_str()) {
                return Err(ClusterError::InvalidArgument(format!(
                    "services[{i}]: service '{}' is declared twice",
                    s.name
                )));
            }
        }
        let mut st = self.lock();
        let mut response = v1::ApplyServicesResponse::default();
        let mut changes = Vec::new();
        // Addresses given to services created earlier in this batch (not yet committed).
        let mut given = Vec::new();
        for (i, s) in req.services.iter().enumerate() {
            let at = |e| prefixed(e, &format!("services[{i}] ({})", s.name));
            let spec = s.spec.clone().unwrap_or_default();
            let existing = st.services.get(&s.name).cloned();
            let (action, diff) = match &existing {
                None => {
                    check_name_free(&st, &s.name).map_err(at)?;
                    (v1::service_change::Action::Create, Vec::new())
                }
                Some(e) => {
                    let diff = spec::diff(&e.spec.clone().unwrap_or_default(), &spec);
                    if diff.is_empty() {
                        (v1::service_change::Action::Unchanged, diff)
                    } else {
                        (v1::service_change::Action::Update, diff)
                    }
                }
            };
            if action != v1::service_change::Action::Unchanged {
                let kind = if existing.is_some() {
                    WatchEventType::Updated
                } else {
                    WatchEventType::Created
                };
                let record = self
                    .declared(&st, existing.as_ref(), &s.name, spec, &given)
                    .map_err(at)?;
                given.push(record.address.clone());
                changes.push(Change::Service(kind, record));
            }
            response.changes.push(v1::ServiceChange {
                name: s.name.clone(),
                action: action as i32,
                diff,
            });
        }
        if req.dry_run {
            return Ok(response);
        }
        self.commit(&mut st, changes)?;
        let now = SystemTime::now();
        response.services = req
            .services
            .iter()
            .filter_map(|s| st.services.get(&s.name))
            .map(|s| with_status(&st, s, now))
            .collect();
        Ok(response)
    }

    /// Checks a declaration and its name.
    fn check_declaration(&self, name: &str, spec: &v1::ServiceSpec) -> Result<(), ClusterError> {
        spec::validate_service_name(name).map_err(ClusterError::InvalidArgument)?;
        let rootfs = spec.template.as_ref().map_or("", |t| t.rootfs.as_str());
        spec::validate(spec, self.is_image_rootfs(rootfs))
            .map_err(|e| ClusterError::InvalidArgument(format!("spec.{e}")))
    }

    /// The record `spec` makes of `existing` (or of nothing): a new template revision when
    /// the template or placement changed (the previous one kept for a rollback), a virtual
    /// address when the cluster has a network for them.
    fn declared(
        &self,
        st: &State,
        existing: Option<&v1::Service>,
        name: &str,
        spec: v1::ServiceSpec,
        given: &[String],
    ) -> Result<v1::Service, ClusterError> {
        check_feasible(st, &spec)?;
        let Some(existing) = existing else {
            let address = match self.config.service_cidr {
                Some(cidr) => free_address(st, &cidr, given)
                    .ok_or_else(|| {
                        ClusterError::FailedPrecondition(format!(
                            "every address of the service block {cidr} is taken: delete a service or give the controller a larger --service-cidr"
                        ))
                    })?
                    .to_string(),
                None => String::new(),
            };
            return Ok(v1::Service {
                name: name.to_string(),
                spec: Some(spec),
                template_revision: 1,
                created_at: Some(timestamp(SystemTime::now())),
                address,
                ..Default::default()
            });
        };
        let mut record = existing.clone();
        let old = existing.spec.clone().unwrap_or_default();
        let shape = |s: &v1::ServiceSpec| (s.template.clone(), s.placement.clone());
        if shape(&old) != shape(&spec) {
            let back_to_previous = existing
                .previous
                .as_ref()
                .is_some_and(|p| (p.template.clone(), p.placement.clone()) == shape(&spec));
            let next_revision = match &existing.previous {
                Some(p) if back_to_previous => p.revision,
                Some(p) => existing.template_revision.max(p.revision) + 1,
                None => existing.template_revision + 1,
            };
            record.previous = Some(v1::ServiceTemplate {
                revision: existing.template_revision,
                template: old.template,
                placement: old.placement,
            });
            record.template_revision = next_revision;
            // A new template resumes a paused update.
            record.status = Some(v1::ServiceStatus::default());
        }
        record.spec = Some(spec);
        Ok(record)
    }

    /// Commits one service record and returns it with its status.
    fn commit_service(
        &self,
        st: &mut State,
        kind: WatchEventType,
        record: v1::Service,
    ) -> Result<v1::Service, ClusterError> {
        let name = record.name.clone();
        self.commit(st, vec![Change::Service(kind, record)])?;
        let svc = st
            .services
            .get(&name)
            .ok_or_else(|| service_not_found(&name))?;
        Ok(with_status(st, svc, SystemTime::now()))
    }
}

/// `e` with `prefix` before its message (which service of several it is about).
fn prefixed(e: ClusterError, prefix: &str) -> ClusterError {
    match e {
        ClusterError::InvalidArgument(m) => ClusterError::InvalidArgument(format!("{prefix}: {m}")),
        ClusterError::FailedPrecondition(m) => {
            ClusterError::FailedPrecondition(format!("{prefix}: {m}"))
        }
        ClusterError::AlreadyExists(m) => ClusterError::AlreadyExists(format!("{prefix}: {m}")),
        other => other,
    }
}

/// A placement no node of the cluster can satisfy, or a rootfs no node has and the cluster
/// cannot build, is refused (while the cluster has nodes: a new cluster's agents may not
/// have joined yet).
fn check_feasible(st: &State, spec: &v1::ServiceSpec) -> Result<(), ClusterError> {
    if st.nodes.is_empty() {
        return Ok(());
    }
    let rootfs = spec.template.as_ref().map_or("", |t| t.rootfs.as_str());
    crate::cluster::containers::check_rootfs_somewhere(st, rootfs).map_err(|e| match e {
        ClusterError::FailedPrecondition(m) => {
            ClusterError::FailedPrecondition(format!("spec.template.rootfs: {m}"))
        }
        other => other,
    })?;
    let placement = spec.placement.clone().unwrap_or_default();
    let labels = |n: &super::NodeEntry| n.record.labels.clone();
    let fits = st.nodes.values().any(|n| {
        let l = labels(n);
        placement
            .node_selector
            .iter()
            .all(|(k, v)| l.get(k) == Some(v))
    });
    if !fits {
        let mut wanted: Vec<String> = placement
            .node_selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        wanted.sort();
        return Err(ClusterError::FailedPrecondition(format!(
            "spec.placement.node_selector: no node carries {} (see `hutch nodes`); replicas could never be placed",
            wanted.join(", ")
        )));
    }
    let by = placement.spread_by.as_str();
    if !by.is_empty()
        && by != "node"
        && !st.nodes.values().any(|n| n.record.labels.contains_key(by))
    {
        return Err(ClusterError::FailedPrecondition(format!(
            "spec.placement.spread_by: no node carries the label '{by}'; label the nodes (hutch-agent --label {by}=...) or spread over nodes"
        )));
    }
    Ok(())
}

/// A service's name must not be a container's: both resolve by bare name.
fn check_name_free(st: &State, name: &str) -> Result<(), ClusterError> {
    if st.containers.contains_key(name) {
        return Err(ClusterError::AlreadyExists(format!(
            "a container is named '{name}': containers reach both by name, so a service must be named otherwise (or remove the container)"
        )));
    }
    Ok(())
}

/// The first address of `cidr` no service has (neither the block's first nor last).
fn free_address(
    st: &State,
    cidr: &hutch_core::network::Cidr,
    given: &[String],
) -> Option<std::net::Ipv4Addr> {
    let taken: std::collections::HashSet<&str> = st
        .services
        .values()
        .map(|s| s.address.as_str())
        .chain(given.iter().map(String::as_str))
        .collect();
    let size = 1u32.checked_shl(32 - u32::from(cidr.prefix)).unwrap_or(0);
    (1..size.saturating_sub(1))
        .filter_map(|n| cidr.host(n))
        .find(|ip| !taken.contains(ip.to_string().as_str()))
}

/// The record of service `name`.
fn service_record(st: &State, name: &str) -> Result<v1::Service, ClusterError> {
    st.services
        .get(name)
        .cloned()
        .ok_or_else(|| service_not_found(name))
}

/// `NotFound` for a service name.
pub(crate) fn service_not_found(name: &str) -> ClusterError {
    ClusterError::NotFound(format!("service '{name}' not found"))
}

/// What the planner knows of each replica of `service` now.
pub(crate) fn replicas_of(st: &State, service: &str) -> Vec<Replica> {
    let Some(names) = st.replicas.get(service) else {
        return Vec::new();
    };
    names
        .iter()
        .filter_map(|n| st.containers.get(n))
        .map(|c| replica_view(st, c))
        .collect()
}

fn replica_view(st: &State, c: &v1::Container) -> Replica {
    let s = state(c);
    let revision = spec::replica_of(c).map_or(0, |(_, r)| r);
    let checked = c.spec.as_ref().is_some_and(|s| s.health.is_some());
    let healthy = !checked
        || c.health
            .as_ref()
            .is_some_and(|h| h.state == v1::HealthState::Healthy as i32);
    let up_since = (s == S::Running && healthy)
        .then(|| c.started_at.as_ref().map(system_time))
        .flatten();
    let failed = (is_final(s) && !st.evicted.contains(&c.name)).then(|| {
        if c.status_message.is_empty() {
            s.as_str_name().to_ascii_lowercase()
        } else {
            c.status_message.clone()
        }
    });
    Replica {
        name: c.name.clone(),
        revision,
        retiring: c.stop_requested,
        up_since,
        failed,
        created_at: c
            .created_at
            .as_ref()
            .map_or(SystemTime::UNIX_EPOCH, system_time),
        node: c.node.clone(),
    }
}

/// What the planner is given for `svc`.
pub(crate) fn desired_of(svc: &v1::Service) -> Desired {
    let spec = svc.spec.clone().unwrap_or_default();
    Desired {
        replicas: spec.replicas,
        revision: svc.template_revision,
        strategy: spec::strategy(&spec.update.unwrap_or_default()),
        paused: svc.status.as_ref().is_some_and(|s| s.paused),
    }
}

/// `svc` with its status counted from its replicas at `now`.
pub(crate) fn with_status(st: &State, svc: &v1::Service, now: SystemTime) -> v1::Service {
    let desired = desired_of(svc);
    let counts = plan::plan(&desired, &replicas_of(st, &svc.name), now).counts;
    let mut out = svc.clone();
    let kept = svc.status.clone().unwrap_or_default();
    let message = if kept.paused {
        kept.message
    } else if counts.converged {
        String::new()
    } else if counts.updated < counts.replicas {
        format!(
            "rolling update to revision {}: {} of {} replicas updated, {} available",
            desired.revision, counts.updated, desired.replicas, counts.available
        )
    } else {
        format!(
            "{} of {} replicas available",
            counts.available, desired.replicas
        )
    };
    out.status = Some(v1::ServiceStatus {
        replicas: counts.replicas,
        updated: counts.updated,
        available: counts.available,
        paused: kept.paused,
        message,
        converged: counts.converged,
    });
    out
}
