//! Container operations: create (validate, record, place), stop, kill, remove, the restart
//! policy, and the loop that places PENDING containers when capacity appears.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use hutch_core::convert::{spec_from, timestamp};
use hutch_core::names::{random_container_name, validate_name};
use hutch_proto::v1::{self, ContainerState as S, WatchEventType};

use super::records::{self, holds_reservation, is_final, ports_of, state, wants_restart};
use super::{not_found, Change, Cluster, ClusterError, State};
use crate::scheduler::Request;

/// Longest a stop may wait for the node beyond the grace period.
const STOP_SLACK: Duration = Duration::from_secs(15);

impl Cluster {
    /// Validates, records and places a new container (see `CreateContainer`).
    pub fn create(
        self: &Arc<Self>,
        req: v1::CreateContainerRequest,
    ) -> Result<v1::Container, ClusterError> {
        let name = if req.name.is_empty() {
            random_container_name().map_err(ClusterError::Random)?
        } else {
            req.name.clone()
        };
        validate_name("container name", &name)
            .map_err(|e| ClusterError::InvalidArgument(format!("name: {e}")))?;
        if name.len() > records::MAX_NAME_LEN {
            return Err(ClusterError::InvalidArgument(format!(
                "name: '{name}' is {} characters long; the limit is {}",
                name.len(),
                records::MAX_NAME_LEN
            )));
        }
        let spec = req
            .spec
            .clone()
            .ok_or_else(|| ClusterError::InvalidArgument("spec: missing".into()))?;
        let parsed =
            spec_from(spec.clone()).map_err(|e| ClusterError::InvalidArgument(e.to_string()))?;
        parsed
            .validate()
            .map_err(|e| ClusterError::InvalidArgument(format!("spec: {e}")))?;
        // Only an image gives a command: refuse here what every node would refuse.
        if parsed.command.is_empty()
            && parsed.entrypoint.as_ref().is_none_or(Vec::is_empty)
            && !self.is_image_rootfs(&parsed.rootfs)
        {
            return Err(ClusterError::InvalidArgument(format!(
                "spec: {}",
                hutch_core::spec::SpecError::EmptyCommand
            )));
        }
        let placement = req.placement.clone().unwrap_or_default();
        if !placement.spread_by.is_empty() {
            return Err(ClusterError::InvalidArgument(
                "placement.spread_by: set by hutch on a service's replicas only; declare a service to spread replicas (hutch apply)".into(),
            ));
        }
        hutch_core::spec::validate_labels(
            "placement.node_selector",
            placement.node_selector.iter(),
        )
        .map_err(ClusterError::InvalidArgument)?;
        if !placement.node.is_empty() {
            validate_name("placement.node", &placement.node)
                .map_err(|e| ClusterError::InvalidArgument(e.to_string()))?;
        }
        let policy = req.restart_policy.unwrap_or_default();
        v1::restart_policy::Kind::try_from(policy.kind).map_err(|_| {
            ClusterError::InvalidArgument(format!(
                "restart_policy.kind: unknown value {}; use NEVER, ON_FAILURE or ALWAYS",
                policy.kind
            ))
        })?;
        if spec.auto_remove && policy.kind != v1::restart_policy::Kind::Never as i32 {
            return Err(ClusterError::InvalidArgument(
                "spec.auto_remove with a restart policy: a container removed when it ends cannot be restarted; drop one of the two (Docker refuses --rm with --restart too)".into(),
            ));
        }
        if let Some(key) = spec
            .labels
            .keys()
            .find(|k| super::services::spec::is_reserved_label(k))
        {
            return Err(ClusterError::InvalidArgument(format!(
                "spec.labels: '{key}' marks a service's replicas and is set by hutch only; choose another key"
            )));
        }

        let mut st = self.lock();
        if st.services.contains_key(&name) {
            return Err(ClusterError::AlreadyExists(format!(
                "a service is named '{name}': containers reach both by name, so choose another container name"
            )));
        }
        let record = self.create_locked(
            &mut st,
            name,
            spec,
            placement,
            policy,
            parsed.host_exposure(),
        )?;
        drop(st);
        if state(&record) == S::Scheduled {
            self.spawn_dispatch(&record);
        }
        Ok(record)
    }

    /// Records and places a checked container under the state lock; the caller dispatches
    /// it when it comes back SCHEDULED.
    pub(crate) fn create_locked(
        &self,
        st: &mut State,
        name: String,
        spec: v1::ContainerSpec,
        placement: v1::Placement,
        policy: v1::RestartPolicy,
        warnings: Vec<String>,
    ) -> Result<v1::Container, ClusterError> {
        if let Some(existing) = st.containers.get(&name) {
            let same = existing.spec.as_ref() == Some(&spec)
                && existing.placement.clone().unwrap_or_default() == placement
                && existing.restart_policy.unwrap_or_default() == policy;
            return if same {
                Ok(existing.clone())
            } else {
                Err(ClusterError::AlreadyExists(format!(
                    "container '{name}' exists with a different spec, placement or restart policy; remove it first or choose another name"
                )))
            };
        }
        // A rootfs no node has and the cluster cannot build would wait forever: said at once.
        check_rootfs_somewhere(st, &spec.rootfs)?;
        let record = v1::Container {
            id: name.clone(),
            name: name.clone(),
            warnings,
            reserved_memory_bytes: spec
                .memory_limit_bytes
                .unwrap_or(self.config.default_reservation_bytes),
            spec: Some(spec),
            placement: Some(placement),
            restart_policy: Some(policy),
            state: S::Pending as i32,
            created_at: Some(timestamp(SystemTime::now())),
            ..Default::default()
        };
        self.place_and_commit(st, record, WatchEventType::Created)
    }

    /// Tries to place `record` (PENDING), then commits it either SCHEDULED on a node or
    /// PENDING with the reason.
    fn place_and_commit(
        &self,
        st: &mut State,
        mut record: v1::Container,
        kind: WatchEventType,
    ) -> Result<v1::Container, ClusterError> {
        match self.place(st, &record) {
            Ok(node) => {
                self.metrics.placements.inc();
                record.state = S::Scheduled as i32;
                record.status_message = format!("placed on {node}");
                record.node = node;
            }
            Err(reason) => {
                record.status_message = reason;
            }
        }
        let mut out = self.commit(st, vec![Change::Container(kind, record)])?;
        out.pop()
            .ok_or_else(|| ClusterError::FailedPrecondition("nothing committed".into()))
    }

    fn place(&self, st: &State, record: &v1::Container) -> Result<String, String> {
        let placement = record.placement.clone().unwrap_or_default();
        let selector: BTreeMap<String, String> = placement.node_selector.into_iter().collect();
        let rootfs = record.spec.as_ref().map_or("", |s| s.rootfs.as_str());
        let ports = ports_of(record);
        let holder = volume_node(st, record)?;
        let spread = siblings_per_node(st, record, &placement.spread_by);
        let node = match (&holder, placement.node.as_str()) {
            (Some((node, volume)), asked) if !asked.is_empty() && asked != node => {
                return Err(format!(
                    "volume '{volume}' is on node '{node}', but node '{asked}' was asked for"
                ))
            }
            (Some((node, _)), _) => Some(node.as_str()),
            (None, "") => None,
            (None, asked) => Some(asked),
        };
        let req = Request {
            cpu_millicores: records::cpu_millicores_of(record),
            memory_bytes: record.reserved_memory_bytes,
            node,
            selector: &selector,
            rootfs,
            // An image reference: any node imports it.
            rootfs_buildable: st.rootfs_specs.contains_key(rootfs)
                || hutch_core::image_ref::looks_like_image(rootfs),
            ports: &ports,
            spread: spread.as_ref(),
        };
        st.scheduler.place(&req).map_err(|e| match &holder {
            Some((node, volume)) => format!("volume '{volume}' is on node '{node}': {e}"),
            None => e.0,
        })
    }

    /// Places every PENDING container that fits now, oldest first.
    pub(crate) fn schedule_pending(self: &Arc<Self>) {
        let pending = self.lock().pending.clone();
        for name in pending {
            let placed = {
                let mut st = self.lock();
                let Some(record) = st.containers.get(&name).cloned() else {
                    continue;
                };
                if state(&record) != S::Pending {
                    continue;
                }
                let before = record.status_message.clone();
                match self.place(&st, &record) {
                    Ok(_) => self.place_and_commit(&mut st, record, WatchEventType::Updated),
                    Err(reason) if reason != before => {
                        let mut r = record;
                        r.status_message = reason;
                        self.place_and_commit(&mut st, r, WatchEventType::Updated)
                    }
                    Err(_) => continue,
                }
            };
            match placed {
                Ok(r) if state(&r) == S::Scheduled => self.spawn_dispatch(&r),
                Ok(_) => {}
                Err(e) => tracing::error!(container = %name, "placing a pending container: {e}"),
            }
        }
    }

    /// Stops a container on its node; it is not restarted.
    pub async fn stop(
        self: &Arc<Self>,
        name: &str,
        grace: Option<u32>,
    ) -> Result<v1::Container, ClusterError> {
        let record = self.request_stop(name).await?;
        match state(&record) {
            S::Pending => {
                let name = name.to_string();
                return self
                    .commit_blocking(move |c| {
                        c.update(&name, |r| {
                            if state(r) != S::Pending {
                                return false;
                            }
                            r.state = S::Exited as i32;
                            r.finished_at = Some(timestamp(SystemTime::now()));
                            r.status_message = "stopped before it was placed".into();
                            true
                        })
                    })
                    .await;
            }
            s if is_final(s) || s == S::Lost => return Ok(record),
            S::Scheduled => {
                // On its way to the node: the dispatcher sees the stop request, or the run
                // arrives and is stopped below.
                let record = self.wait_until_started(name).await?;
                if state(&record) != S::Running {
                    return Ok(record);
                }
            }
            _ => {}
        }
        let mut client = self.client_for(&record.node)?;
        let grace_total = grace
            .or(record.spec.as_ref().and_then(|s| s.stop_grace_seconds))
            .unwrap_or(hutch_core::spec::DEFAULT_STOP_GRACE_SECONDS);
        let mut request = tonic::Request::new(v1::StopContainerRequest {
            id: records::current_agent_id(&record),
            grace_seconds: grace,
        });
        request.set_timeout(Duration::from_secs(u64::from(grace_total)) + STOP_SLACK);
        let agent_view = client
            .stop_container(request)
            .await
            .map_err(|status| node_error(&record.node, status))?
            .into_inner();
        self.apply_agent_view(&record.node, agent_view).await?;
        self.get(name)
    }

    /// Waits while the container is SCHEDULED (its run on the way to the node).
    async fn wait_until_started(&self, name: &str) -> Result<v1::Container, ClusterError> {
        let deadline = tokio::time::Instant::now() + STOP_SLACK;
        loop {
            let record = self.get(name)?;
            if state(&record) != S::Scheduled || tokio::time::Instant::now() > deadline {
                return Ok(record);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Marks the container as stopped on purpose (no restart) and returns it.
    async fn request_stop(self: &Arc<Self>, name: &str) -> Result<v1::Container, ClusterError> {
        let name = name.to_string();
        self.commit_blocking(move |c| {
            c.update(&name, |r| {
                if r.stop_requested {
                    return false;
                }
                r.stop_requested = true;
                true
            })
        })
        .await
    }

    /// Sends `signal` to the container on its node. SIGKILL, SIGTERM and SIGINT mark it as
    /// stopped on purpose (no restart).
    pub async fn kill(self: &Arc<Self>, name: &str, signal: i32) -> Result<(), ClusterError> {
        let record = if matches!(signal, 0 | 2 | 9 | 15) {
            self.request_stop(name).await?
        } else {
            self.get(name)?
        };
        if !holds_reservation(state(&record)) {
            return Err(ClusterError::FailedPrecondition(format!(
                "container '{name}' is not running (state {})",
                state(&record).as_str_name()
            )));
        }
        let mut client = self.client_for(&record.node)?;
        client
            .kill_container(v1::KillContainerRequest {
                id: records::current_agent_id(&record),
                signal,
            })
            .await
            .map_err(|status| node_error(&record.node, status))?;
        Ok(())
    }

    /// Forgets the container and removes it from its node.
    pub async fn remove(self: &Arc<Self>, name: &str, force: bool) -> Result<(), ClusterError> {
        let created_at = self.get(name)?.created_at;
        self.remove_record(name, force, created_at).await
    }

    /// [`Cluster::remove`] of the record of `name` created at `created_at` only: nothing
    /// happens when the name now belongs to another record.
    pub(crate) async fn remove_record(
        self: &Arc<Self>,
        name: &str,
        force: bool,
        created_at: Option<prost_types::Timestamp>,
    ) -> Result<(), ClusterError> {
        let record = self.get(name)?;
        if record.created_at != created_at {
            return Ok(());
        }
        let running = holds_reservation(state(&record));
        if running && !force {
            return Err(ClusterError::FailedPrecondition(format!(
                "container '{name}' is {} on {}; stop it first or remove with force",
                state(&record).as_str_name(),
                record.node
            )));
        }
        if !record.node.is_empty() {
            match self.client_for(&record.node) {
                Ok(mut client) => {
                    let removed = client
                        .remove_container(v1::RemoveContainerRequest {
                            id: records::current_agent_id(&record),
                            force: true,
                        })
                        .await;
                    match removed {
                        Ok(_) => {}
                        Err(s) if s.code() == tonic::Code::NotFound => {}
                        Err(s) if !running => tracing::warn!(
                            container = %name, node = %record.node,
                            "could not remove the node's copy ({s}); it is removed when the node reconciles"
                        ),
                        Err(s) => return Err(node_error(&record.node, s)),
                    }
                }
                Err(e) if running => return Err(e),
                Err(_) => {}
            }
        }
        if let Some(before) = records::previous_copy(&record) {
            self.spawn_remove_copy(&record.previous_node, &before);
        }
        // Its volumes stay on its node: known there before the node's next heartbeat says
        // so, so a pending container naming them is not placed elsewhere meanwhile.
        if !record.node.is_empty() {
            for volume in records::volumes_of(&record) {
                self.node_volume(&record.node, volume, true);
            }
        }
        let name = name.to_string();
        self.commit_blocking(move |c| {
            let mut st = c.lock();
            let Some(r) = st.containers.get(&name).cloned() else {
                return Ok(());
            };
            if r.created_at != created_at {
                return Ok(());
            }
            c.commit(&mut st, vec![Change::Removed(r)]).map(drop)
        })
        .await?;
        // What it held is free: a PENDING container may fit now.
        self.kick.notify_one();
        Ok(())
    }

    /// Changes one record with `f` (which returns whether it changed anything) and commits.
    pub(crate) fn update(
        &self,
        name: &str,
        f: impl FnOnce(&mut v1::Container) -> bool,
    ) -> Result<v1::Container, ClusterError> {
        self.update_if(name, |_| true, f)
    }

    /// [`Cluster::update`], only while `node` is registered: what a removed node's agent
    /// answers late (a run, a reconciliation) no longer counts.
    pub(crate) fn update_on_node(
        &self,
        name: &str,
        node: &str,
        f: impl FnOnce(&mut v1::Container) -> bool,
    ) -> Result<v1::Container, ClusterError> {
        self.update_if(name, |st| st.nodes.contains_key(node), f)
    }

    fn update_if(
        &self,
        name: &str,
        guard: impl FnOnce(&State) -> bool,
        f: impl FnOnce(&mut v1::Container) -> bool,
    ) -> Result<v1::Container, ClusterError> {
        let mut st = self.lock();
        let mut record = st
            .containers
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        if !guard(&st) || !f(&mut record) {
            return Ok(record);
        }
        let mut out = self.commit(
            &mut st,
            vec![Change::Container(WatchEventType::Updated, record)],
        )?;
        out.pop().ok_or_else(|| not_found(name))
    }

    /// After a run ended (or was lost): schedules a restart when the policy asks for one;
    /// removes an ended `auto_remove` container.
    pub(crate) fn after_end(self: &Arc<Self>, record: &v1::Container) {
        let evicted = self.lock().evicted.contains(&record.name);
        if !wants_restart(record, evicted) {
            let auto_remove = record.spec.as_ref().is_some_and(|s| s.auto_remove);
            if auto_remove && is_final(state(record)) {
                self.spawn_auto_remove(record);
            }
            self.kick.notify_one();
            return;
        }
        let delay = records::restart_backoff(
            self.config.restart_backoff,
            self.config.restart_backoff_max,
            record.restart_count,
        );
        let name = record.name.clone();
        let attempt = record.restart_count;
        let note = format!(
            "{}; restarting in {} (restart {})",
            record.status_message,
            humantime::format_duration(delay),
            attempt + 1
        );
        let me = self.clone();
        // Called from async tasks and from blocking commits alike: the commits below run on
        // blocking threads of their own.
        tokio::spawn(async move {
            let noted = me
                .commit_blocking({
                    let name = name.clone();
                    move |c| {
                        c.update(&name, |r| {
                            if r.restart_count != attempt {
                                return false;
                            }
                            r.status_message = note;
                            true
                        })
                    }
                })
                .await;
            if let Err(e) = noted {
                tracing::error!(container = %name, "recording the restart: {e}");
            }
            let me = Arc::downgrade(&me);
            tokio::time::sleep(delay).await;
            if let Some(c) = me.upgrade() {
                c.commit_blocking(move |c| c.restart(&name, attempt)).await;
            }
        });
        self.kick.notify_one();
    }

    /// Counts an open `ContainerLogs` stream of container `name` until the guard is dropped.
    pub fn log_reader(self: &Arc<Self>, name: &str) -> LogReader {
        *self.lock().log_readers.entry(name.to_string()).or_default() += 1;
        LogReader {
            cluster: Arc::downgrade(self),
            name: name.to_string(),
        }
    }

    /// Open log streams of `name`, and whether one has been read and closed.
    fn log_readers(&self, name: &str) -> (usize, bool) {
        let st = self.lock();
        (
            st.log_readers.get(name).copied().unwrap_or(0),
            st.logs_read.contains(name),
        )
    }

    /// Removes ended container `name` (`auto_remove`), in a task of its own, once the
    /// clients reading its output have read it to the end: `hutch run --rm` follows the logs
    /// of a container that may end before the stream is open, so without a reader the
    /// removal waits [`AUTO_REMOVE_GRACE`] for one. A failure is logged and left to the user
    /// (`hutch rm`).
    fn spawn_auto_remove(self: &Arc<Self>, record: &v1::Container) {
        let me = Arc::downgrade(self);
        let name = record.name.clone();
        // This record only: a new container may take the name once it is gone.
        let created_at = record.created_at;
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            loop {
                let Some(cluster) = me.upgrade() else { return };
                // Made before the look, so a reader closing right after it is not missed.
                let closed = cluster.log_reader_closed.notified();
                let (readers, read) = cluster.log_readers(&name);
                let waited = started.elapsed();
                if (readers == 0 && (read || waited >= AUTO_REMOVE_GRACE))
                    || waited >= AUTO_REMOVE_READERS_MAX
                {
                    break;
                }
                // Woken by a closing reader (of any container), or when the wait is up.
                let until = started
                    + match readers {
                        0 => AUTO_REMOVE_GRACE,
                        _ => AUTO_REMOVE_READERS_MAX,
                    };
                let mut term_over = cluster.term_over();
                tokio::select! {
                    _ = closed => {}
                    _ = tokio::time::sleep_until(until) => {}
                    _ = term_over.wait_for(|over| *over) => return,
                }
            }
            let Some(cluster) = me.upgrade() else { return };
            match cluster.remove_record(&name, true, created_at).await {
                Ok(()) | Err(ClusterError::NotFound(_)) => {
                    tracing::info!(container = %name, "removed when it ended (auto_remove)");
                }
                Err(e) => tracing::error!(container = %name, "auto_remove: {e}"),
            }
        });
    }

    /// Starts run `attempt + 1` of an ended container, wherever it fits now.
    fn restart(self: &Arc<Self>, name: &str, attempt: u32) {
        let result = {
            let mut st = self.lock();
            let Some(old) = st.containers.get(name).cloned() else {
                return;
            };
            let s = state(&old);
            if old.restart_count != attempt || !(is_final(s) || s == S::Lost) || old.stop_requested
            {
                return;
            }
            st.evicted.remove(name);
            let mut record = old.clone();
            records::reset_for_new_run(&mut record);
            record.restart_count += 1;
            // The ended run's copy stays for `logs --previous`; the one before goes.
            record.previous_node = if s == S::Lost {
                String::new()
            } else {
                old.node.clone()
            };
            self.place_and_commit(&mut st, record, WatchEventType::Updated)
                .map(|r| (old, r))
        };
        match result {
            Ok((old, new)) => {
                tracing::info!(container = %name, node = %new.node, restart = new.restart_count, "restarting");
                if let Some(before) = records::previous_copy(&old) {
                    self.spawn_remove_copy(&old.previous_node, &before);
                }
                if state(&new) == S::Scheduled {
                    self.spawn_dispatch(&new);
                }
            }
            Err(e) => tracing::error!(container = %name, "restart: {e}"),
        }
    }

    /// Stops a container its health checks found unhealthy, when its restart policy would
    /// start it again (the stop counts as a failure, as a drain's does); one without such a
    /// policy keeps running, unhealthy, for someone to look at.
    pub(crate) fn stop_unhealthy(self: &Arc<Self>, record: &v1::Container) {
        if !wants_restart(record, true) {
            return;
        }
        let Ok(mut client) = self.client_for(&record.node) else {
            return;
        };
        self.lock().evicted.insert(record.name.clone());
        let me = self.clone();
        let (name, node, copy) = (
            record.name.clone(),
            record.node.clone(),
            records::current_agent_id(record),
        );
        let grace = record
            .spec
            .as_ref()
            .and_then(|s| s.stop_grace_seconds)
            .unwrap_or(hutch_core::spec::DEFAULT_STOP_GRACE_SECONDS);
        tokio::spawn(async move {
            tracing::warn!(container = %name, %node, "unhealthy: stopping it to start it again");
            let mut request = tonic::Request::new(v1::StopContainerRequest {
                id: copy,
                grace_seconds: None,
            });
            request.set_timeout(Duration::from_secs(u64::from(grace) + 15));
            match client.stop_container(request).await {
                Ok(view) => {
                    if let Err(e) = me.apply_agent_view(&node, view.into_inner()).await {
                        tracing::error!(container = %name, "after stopping an unhealthy container: {e}");
                    }
                }
                Err(s) => tracing::warn!(container = %name, "stopping an unhealthy container: {s}"),
            }
        });
    }

    /// Removes the node's copy `name` (an agent id) in the background (best effort), once
    /// the change that made it an old copy is durable.
    pub(crate) fn spawn_remove_copy(self: &Arc<Self>, node: &str, name: &str) {
        let Ok(mut client) = self.client_for(node) else {
            return;
        };
        let (node, name) = (node.to_string(), name.to_string());
        let cluster = self.clone();
        tokio::spawn(async move {
            if cluster.settled().await.is_err() {
                return;
            }
            let removed = client
                .remove_container(v1::RemoveContainerRequest {
                    id: name.clone(),
                    force: true,
                })
                .await;
            if let Err(s) = removed {
                if s.code() != tonic::Code::NotFound {
                    tracing::warn!(%node, container = %name, "removing an old copy: {s}");
                }
            }
        });
    }
}

/// FAILED_PRECONDITION when no node has `rootfs` and the cluster cannot build it (while the
/// cluster has nodes at all).
pub(crate) fn check_rootfs_somewhere(st: &State, rootfs: &str) -> Result<(), ClusterError> {
    let nowhere = !st.rootfs_specs.contains_key(rootfs)
        && !hutch_core::image_ref::looks_like_image(rootfs)
        && !st.nodes.is_empty()
        && !st
            .nodes
            .values()
            .any(|n| n.record.rootfs.iter().any(|r| r == rootfs));
    if nowhere {
        return Err(ClusterError::FailedPrecondition(format!(
            "no node has rootfs '{rootfs}' and the cluster does not know how to build it: build it first, e.g. `hutch rootfs build {rootfs}` (Debian by debootstrap; --image, --tarball, --directory, --initramfs for others)"
        )));
    }
    Ok(())
}

/// Places PENDING containers whenever something may have freed or added capacity.
pub(crate) async fn placement_loop(cluster: Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        if c.stepped_down() {
            return;
        }
        let kick = c.kick.clone();
        let notified = kick.notified();
        let has_pending = !c.lock().pending.is_empty();
        if has_pending {
            c.commit_blocking(|c| c.schedule_pending()).await;
        }
        drop(c);
        notified.await;
    }
}

/// A node's error answer, with the node named.
pub(crate) fn node_error(node: &str, status: tonic::Status) -> ClusterError {
    ClusterError::Node {
        node: node.to_string(),
        status,
    }
}

/// How long an ended `auto_remove` container waits for a client to open its logs.
pub const AUTO_REMOVE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// The longest an ended `auto_remove` container waits for its readers to finish.
pub const AUTO_REMOVE_READERS_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// An open `ContainerLogs` stream (see [`Cluster::log_reader`]).
pub struct LogReader {
    cluster: std::sync::Weak<Cluster>,
    name: String,
}

impl Drop for LogReader {
    fn drop(&mut self) {
        if let Some(c) = self.cluster.upgrade() {
            let mut st = c.lock();
            if let Some(n) = st.log_readers.get_mut(&self.name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    st.log_readers.remove(&self.name);
                }
            }
            if st.containers.contains_key(&self.name) {
                st.logs_read.insert(self.name.clone());
            }
            drop(st);
            c.log_reader_closed.notify_waiters();
        }
    }
}

/// The nodes that hold volume `volume`: those reporting it, those where a record that
/// mounts it was placed (its first container may not have created it yet), and the one a
/// `CreateVolume` is making it on (or lately made it on: a heartbeat sent before may not
/// list it yet).
pub(crate) fn volume_holders(st: &State, volume: &str) -> std::collections::BTreeSet<String> {
    let mut holders = st.scheduler.volume_holders(volume);
    if let Some((node, at)) = st.volume_claims.get(volume) {
        if at.elapsed() < super::volumes::CLAIM_TTL {
            holders.insert(node.clone());
        }
    }
    holders.extend(
        st.containers
            .values()
            .filter(|c| !c.node.is_empty() && records::volumes_of(c).any(|v| v == volume))
            .map(|c| c.node.clone()),
    );
    holders
}

/// The node a record must run on because of its volumes (with the volume that decides),
/// `None` when none of them exists yet; an error when they are on different nodes.
fn volume_node(st: &State, record: &v1::Container) -> Result<Option<(String, String)>, String> {
    let mut found: Option<(String, String)> = None;
    for volume in records::volumes_of(record) {
        let holders = volume_holders(st, volume);
        let mut holders = holders.into_iter();
        let Some(node) = holders.next() else {
            continue;
        };
        if let Some(other) = holders.next() {
            return Err(format!(
                "volume '{volume}' exists on more than one node ({node}, {other}): remove all but one"
            ));
        }
        match &found {
            Some((held, first)) if *held != node => {
                return Err(format!(
                    "volume '{first}' is on node '{held}' and volume '{volume}' on node '{node}': a container mounts volumes of one node"
                ))
            }
            Some(_) => {}
            None => found = Some((node, volume.to_string())),
        }
    }
    Ok(found)
}

/// For a service's replica spread by `spread_by` (a node label, or `node`): per node, how
/// many live replicas of its service the node's domain (the nodes sharing its value of the
/// label) holds. `None` for other containers.
fn siblings_per_node(
    st: &State,
    record: &v1::Container,
    spread_by: &str,
) -> Option<std::collections::HashMap<String, usize>> {
    if spread_by.is_empty() {
        return None;
    }
    let (service, _) = super::services::spec::replica_of(record)?;
    let domain_of = |node: &str| -> String {
        if spread_by == "node" {
            return node.to_string();
        }
        st.nodes
            .get(node)
            .and_then(|n| n.record.labels.get(spread_by).cloned())
            .unwrap_or_default()
    };
    let mut per_domain: std::collections::HashMap<String, usize> = Default::default();
    for name in st.replicas.get(service).into_iter().flatten() {
        let Some(c) = st.containers.get(name) else {
            continue;
        };
        if c.name == record.name
            || c.stop_requested
            || c.node.is_empty()
            || !holds_reservation(state(c))
        {
            continue;
        }
        *per_domain.entry(domain_of(&c.node)).or_default() += 1;
    }
    Some(
        st.nodes
            .keys()
            .map(|n| {
                (
                    n.clone(),
                    per_domain.get(&domain_of(n)).copied().unwrap_or(0),
                )
            })
            .collect(),
    )
}
