//! The loop that keeps every service's replicas in step with its declaration: on each change
//! of a service or a replica (and once a second, for the strategy's timers) it plans every
//! service ([`super::plan`]) and carries the plan out: retired replicas are marked as
//! stopped on purpose (they leave the service's address at once) and then, in a task of
//! their own, stopped and removed; a paused update is recorded in the service's status; new
//! replicas are recorded, placed and sent to their node one at a time. Replicas of a
//! deleted service are retired.

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use hutch_core::convert::spec_from;
use hutch_proto::v1::{self, ContainerState as S, WatchEventType};

use super::plan;
use super::spec::{replica_request, REVISION_LABEL};
use super::{desired_of, replicas_of};
use crate::cluster::records::state;
use crate::cluster::{Change, Cluster, ClusterError, State};

/// How often the loop runs without a change (the strategy's timers: min_ready, deadlines).
const TICK: Duration = Duration::from_secs(1);
/// Most replicas one pass creates for a service (each is a commit of its own); the commits
/// wake the loop again at once for the rest.
const CREATES_PER_PASS: u32 = 100;
/// Longest wait between attempts to remove a retired replica whose node does not answer.
const RETIRE_RETRY_MAX: Duration = Duration::from_secs(30);

/// What a pass leaves to do once the state lock is released.
#[derive(Default)]
struct Followups {
    /// Services that lack replicas.
    create: Vec<String>,
    /// Replicas to stop and remove.
    retire: Vec<v1::Container>,
}

impl crate::cluster::durable::Outcome for Followups {
    /// Nothing to follow up once the changes are lost: the cluster stepped down.
    fn unless_lost(self, _: crate::cluster::ClusterError) -> Self {
        Followups::default()
    }
}

/// Runs the reconciler until the cluster is gone or steps down.
pub(crate) async fn service_loop(cluster: Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        if c.stepped_down() {
            return;
        }
        let kick = c.service_kick.clone();
        let notified = kick.notified();
        let busy = {
            let st = c.lock();
            !st.services.is_empty() || !st.replicas.is_empty()
        };
        if busy {
            let followups = c.commit_blocking(|c| c.reconcile_services()).await;
            for service in followups.create {
                c.commit_blocking(move |c| c.create_wanted(&service)).await;
            }
            for record in followups.retire {
                c.spawn_retire(record);
            }
        }
        drop(c);
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

impl Cluster {
    /// One pass over every service (and the replicas of deleted ones).
    fn reconcile_services(&self) -> Followups {
        let mut st = self.lock();
        let mut out = Followups::default();
        let now = SystemTime::now();
        let names: Vec<String> = st.services.keys().cloned().collect();
        for name in names {
            let span = tracing::info_span!("reconcile", service = %name);
            let _entered = span.enter();
            if let Err(e) = self.reconcile_service(&mut st, &name, now, &mut out) {
                tracing::error!("reconciling: {e}");
            }
        }
        // Replicas whose service is gone.
        let orphans: Vec<String> = st
            .replicas
            .iter()
            .filter(|(service, _)| !st.services.contains_key(*service))
            .flat_map(|(_, names)| names.iter().cloned())
            .collect();
        for name in orphans {
            if let Err(e) = self.mark_retired(&mut st, &name, &mut out) {
                tracing::error!(container = %name, "retiring a replica of a deleted service: {e}");
            }
        }
        // Replicas marked before (by an earlier leader, or a task that gave up) without a
        // task taking them out.
        let stranded: Vec<v1::Container> = st
            .replicas
            .values()
            .flatten()
            .filter_map(|n| st.containers.get(n))
            .filter(|c| c.stop_requested && !st.retiring.contains(&c.name))
            .cloned()
            .collect();
        for c in stranded {
            st.retiring.insert(c.name.clone());
            out.retire.push(c);
        }
        out
    }

    fn reconcile_service(
        &self,
        st: &mut State,
        name: &str,
        now: SystemTime,
        out: &mut Followups,
    ) -> Result<(), ClusterError> {
        let Some(svc) = st.services.get(name).cloned() else {
            return Ok(());
        };
        let plan = plan::plan(&desired_of(&svc), &replicas_of(st, name), now);
        if let Some(why) = &plan.pause {
            self.pause(st, &svc, why.clone())?;
        }
        for replica in &plan.retire {
            self.mark_retired(st, replica, out)?;
        }
        if plan.create > 0 {
            out.create.push(name.to_string());
        }
        Ok(())
    }

    /// Records the pause of `svc`'s update, with why.
    fn pause(&self, st: &mut State, svc: &v1::Service, why: String) -> Result<(), ClusterError> {
        tracing::warn!(service = %svc.name, "{why}");
        let mut record = svc.clone();
        record.status = Some(v1::ServiceStatus {
            paused: true,
            message: why,
            ..Default::default()
        });
        self.commit(st, vec![Change::Service(WatchEventType::Updated, record)])
            .map(drop)
    }

    /// Creates the replicas service `name` lacks, one per lock taken (planned again each
    /// time, at most [`CREATES_PER_PASS`]), each sent to its node at once: the nodes start
    /// replicas while the next ones are recorded. A creation that fails during an update
    /// pauses it.
    fn create_wanted(self: &Arc<Self>, name: &str) {
        for _ in 0..CREATES_PER_PASS {
            let created = {
                let mut st = self.lock();
                let Some(svc) = st.services.get(name).cloned() else {
                    return;
                };
                let plan = plan::plan(
                    &desired_of(&svc),
                    &replicas_of(&st, name),
                    SystemTime::now(),
                );
                if plan.create == 0 || plan.pause.is_some() {
                    return;
                }
                match self.create_replica(&mut st, &svc) {
                    Ok(record) => record,
                    Err(e) => {
                        let rolling = plan.counts.updated < plan.counts.replicas;
                        let why = format!(
                            "rolling update to revision {} paused: a new replica cannot be created ({e}); apply a fixed template or roll back",
                            svc.template_revision
                        );
                        match rolling {
                            true => {
                                if let Err(e) = self.pause(&mut st, &svc, why) {
                                    tracing::error!(service = %name, "recording a pause: {e}");
                                }
                            }
                            false => tracing::error!(service = %name, "creating a replica: {e}"),
                        }
                        return;
                    }
                }
            };
            if state(&created) == S::Scheduled {
                self.spawn_dispatch(&created);
            }
        }
    }

    /// Records and places one new replica of `svc`'s current template.
    fn create_replica(
        &self,
        st: &mut State,
        svc: &v1::Service,
    ) -> Result<v1::Container, ClusterError> {
        let spec = svc.spec.clone().unwrap_or_default();
        let template = spec.template.clone().unwrap_or_default();
        let warnings = spec_from(template.clone())
            .map(|s| s.host_exposure())
            .unwrap_or_default();
        let placement = spec.placement.clone().unwrap_or_default();
        let suffix = hutch_core::names::random_name("").map_err(ClusterError::Random)?;
        let replica = format!(
            "{}-{}-{}",
            svc.name,
            svc.template_revision,
            &suffix[..suffix.len().min(6)]
        );
        let req = replica_request(
            &svc.name,
            &template,
            svc.template_revision,
            &placement,
            replica,
        );
        let record = self.create_locked(
            st,
            req.name,
            req.spec.unwrap_or_default(),
            req.placement.unwrap_or_default(),
            req.restart_policy.unwrap_or_default(),
            warnings,
        )?;
        tracing::info!(container = %record.name, node = %record.node, revision = svc.template_revision, "replica created");
        Ok(record)
    }

    /// Marks replica `name` as stopped on purpose (it leaves the service's address and is
    /// not restarted) and queues its removal.
    fn mark_retired(
        &self,
        st: &mut State,
        name: &str,
        out: &mut Followups,
    ) -> Result<(), ClusterError> {
        let Some(mut record) = st.containers.get(name).cloned() else {
            return Ok(());
        };
        if !record.stop_requested {
            record.stop_requested = true;
            let revision = record
                .spec
                .as_ref()
                .and_then(|s| s.labels.get(REVISION_LABEL))
                .cloned()
                .unwrap_or_default();
            tracing::info!(container = %name, %revision, "retiring replica");
            let mut committed =
                self.commit(st, vec![Change::Container(WatchEventType::Updated, record)])?;
            record = committed
                .pop()
                .ok_or_else(|| super::super::not_found(name))?;
        }
        if st.retiring.insert(name.to_string()) {
            out.retire.push(record);
        }
        Ok(())
    }

    /// Stops and removes a retired replica in the background: first a pause so that every
    /// node has dropped it from the service's address, then a graceful stop, then the
    /// removal, retried while its node does not answer.
    fn spawn_retire(self: &Arc<Self>, record: v1::Container) {
        let me = Arc::downgrade(self);
        let drain = self.config.heartbeat_interval + Duration::from_millis(500);
        tokio::spawn(async move {
            let name = record.name.clone();
            if state(&record) == S::Running {
                tokio::time::sleep(drain).await;
            }
            let mut wait = Duration::from_secs(1);
            loop {
                let Some(c) = me.upgrade() else { return };
                if c.stepped_down() {
                    return;
                }
                let removed = c.retire(&record).await;
                match removed {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(container = %name, "removing a retired replica: {e}; trying again in {}", humantime::format_duration(wait));
                    }
                }
                drop(c);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETIRE_RETRY_MAX);
            }
            if let Some(c) = me.upgrade() {
                c.lock().retiring.remove(&name);
                c.service_kick.notify_one();
            }
        });
    }

    /// Stops (gracefully, where its node answers) and removes one retired replica.
    async fn retire(self: &Arc<Self>, record: &v1::Container) -> Result<(), ClusterError> {
        let name = record.name.as_str();
        let current = match self.get(name) {
            Ok(c) if c.created_at == record.created_at => c,
            _ => return Ok(()),
        };
        if crate::cluster::records::holds_reservation(state(&current)) {
            if let Err(e) = self.stop(name, None).await {
                tracing::debug!(container = %name, "stopping a retired replica: {e}");
            }
        }
        match self.remove_record(name, true, record.created_at).await {
            Ok(()) | Err(ClusterError::NotFound(_)) => {
                tracing::info!(container = %name, "retired replica removed");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
