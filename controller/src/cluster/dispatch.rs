//! Talking to agents about containers: starting a SCHEDULED container on its node (exactly
//! once per run, even across controller restarts), following each agent's event stream
//! from the last event applied, and reconciling a node's containers with the records when
//! the node (re)registers.
//!
//! Exactly once: the agent's copy of run N of container NAME has the id `NAME.N` (unique per
//! node) and carries the label `hutch.attempt=N`. A second `RunContainer` for the same run
//! finds ALREADY_EXISTS and adopts the copy; events name the run they are about, so an old
//! run's events never touch a newer run; a copy the record does not point at (another node,
//! another run, a removed record) is stopped and removed when its node reconciles.

use std::sync::Arc;
use std::time::Duration;

use hutch_proto::v1::{self, ContainerState as S, WatchEventType};
use tokio_stream::StreamExt;

use super::containers::node_error;
use super::records::{self, is_final, moves_forward, state, ATTEMPT_LABEL};
use super::{Change, Cluster, ClusterError};
use crate::agents::AgentRpc;

/// Longest a `RunContainer` may take on the node (rootfs already there).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Starts the controller has in flight on one node per CPU the node reports; the others
/// wait SCHEDULED. A start is mostly CPU (clone, mounts, exec, network plugins): a burst of
/// creates (a thousand at once) would otherwise start a thousand supervisors together, and
/// on a small node every one of them would take longer than its time limit; more starts
/// than CPUs only queue in the kernel, ahead of the agent, the controller and the
/// containers already running. Measured on 2 CPUs with `hutch-bench throughput
/// watch-fanout`, interleaved: 4 in flight against 16 made the watchers' p99 10-13 ms
/// instead of 18-21 ms, at the same rate of starts.
pub const DISPATCH_PER_CPU: usize = 2;
/// The fewest starts in flight on one node.
pub const DISPATCH_MIN: usize = 2;
/// The most starts in flight on one node, however many CPUs it has.
pub const DISPATCH_MAX: usize = 64;
/// Starts in flight on a node that reports no CPU count (an older agent): what every node
/// had before the count was used.
pub const DISPATCH_UNKNOWN_CPUS: usize = 16;

/// How many starts may be in flight on a node with `cpu_count` CPUs (0: not reported).
pub fn start_slots(cpu_count: u32) -> usize {
    match cpu_count {
        0 => DISPATCH_UNKNOWN_CPUS,
        n => (n as usize)
            .saturating_mul(DISPATCH_PER_CPU)
            .clamp(DISPATCH_MIN, DISPATCH_MAX),
    }
}
/// Longest a rootfs build before a run may take.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);
/// First and longest pause between retries against an agent.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Removes `name` from the in-flight set when dropped.
struct InflightGuard {
    cluster: Arc<Cluster>,
    name: String,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.cluster.lock().inflight.remove(&self.name);
    }
}

/// The failing step of a start the node refused: the agent says "... failed to start at
/// step 'STEP': MESSAGE"; anything else is the step "start".
fn failure_of(message: &str) -> v1::Failure {
    let parsed = message
        .split_once("failed to start at step '")
        .and_then(|(_, rest)| rest.split_once("': "));
    match parsed {
        Some((step, detail)) => v1::Failure {
            step: step.to_string(),
            message: detail.to_string(),
        },
        None => v1::Failure {
            step: "start".into(),
            message: message.to_string(),
        },
    }
}

/// Whether an agent's copy was started by the controller.
fn is_ours(c: &v1::Container) -> bool {
    c.spec
        .as_ref()
        .is_some_and(|s| s.labels.contains_key(ATTEMPT_LABEL))
}

fn is_transient(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
    )
}

/// A node that answers that it could not import an image (a registry down, a layer that
/// broke off) is no node that cannot be reached: the run fails with the node's reason
/// instead of being retried for ever.
fn image_failure_is_final(status: tonic::Status) -> tonic::Status {
    if is_transient(status.code()) && status.message().starts_with("image: ") {
        tonic::Status::failed_precondition(status.message().to_string())
    } else {
        status
    }
}

impl Cluster {
    /// The start slots of `node` ([`start_slots`] of its CPUs): made again when the node
    /// registers with another CPU count (starts holding the old ones finish on them).
    fn dispatch_slots(&self, node: &str) -> Arc<tokio::sync::Semaphore> {
        let cpus = self
            .lock()
            .nodes
            .get(node)
            .map_or(0, |e| e.record.cpu_count);
        let mut slots = self
            .dispatch_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = slots.entry(node.to_string()).or_insert_with(|| {
            (
                cpus,
                Arc::new(tokio::sync::Semaphore::new(start_slots(cpus))),
            )
        });
        if entry.0 != cpus {
            *entry = (
                cpus,
                Arc::new(tokio::sync::Semaphore::new(start_slots(cpus))),
            );
        }
        entry.1.clone()
    }

    /// Starts the record's run on its node in the background (once per run at a time).
    pub(crate) fn spawn_dispatch(self: &Arc<Self>, record: &v1::Container) {
        if !self.lock().inflight.insert(record.name.clone()) {
            return;
        }
        let guard = InflightGuard {
            cluster: self.clone(),
            name: record.name.clone(),
        };
        let me = self.clone();
        let (name, attempt) = (record.name.clone(), record.restart_count);
        let span = tracing::info_span!("dispatch", container = %name, node = %record.node, attempt);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                me.dispatch(&name, attempt).await;
                drop(guard);
            },
            span,
        ));
    }

    async fn dispatch(self: &Arc<Self>, name: &str, attempt: u32) {
        let mut pause = RETRY_FIRST;
        loop {
            if self.stepped_down() {
                return;
            }
            let Ok(record) = self.get(name) else { return };
            if record.restart_count != attempt || state(&record) != S::Scheduled {
                return;
            }
            if record.stop_requested {
                let name = name.to_string();
                let stopped = self
                    .commit_blocking(move |c| {
                        c.update(&name, |r| {
                            if r.restart_count != attempt || state(r) != S::Scheduled {
                                return false;
                            }
                            r.state = S::Exited as i32;
                            r.status_message = "stopped before it started".into();
                            true
                        })
                    })
                    .await;
                if let Ok(r) = stopped {
                    self.after_end(&r);
                }
                return;
            }
            // Never start a container on a node before its record is durable: a crash
            // would forget it while it runs.
            if self.settled().await.is_err() {
                return;
            }
            let node = record.node.clone();
            match self.run_on_node(&record).await {
                Ok(view) => {
                    let copy = view.name.clone();
                    if let Err(e) = self.apply_agent_view(&node, view).await {
                        tracing::error!("recording the started container: {e}");
                    }
                    // Removed, or moved on to another run, while the run was on its way:
                    // the copy belongs to nobody.
                    let current = self
                        .get(name)
                        .is_ok_and(|r| r.node == node && r.restart_count == attempt);
                    if !current {
                        tracing::info!(%copy, "removing a copy started for a record that moved on");
                        self.spawn_remove_copy(&node, &copy);
                    }
                    return;
                }
                Err(ClusterError::Node { status, .. }) if !is_transient(status.code()) => {
                    let message = format!("node {node} could not start it: {}", status.message());
                    tracing::warn!("{message}");
                    let name = name.to_string();
                    let failed = self
                        .commit_blocking(move |c| {
                            c.update(&name, |r| {
                                if r.restart_count != attempt || state(r) != S::Scheduled {
                                    return false;
                                }
                                r.state = S::Failed as i32;
                                r.failure = Some(failure_of(status.message()));
                                r.status_message = message;
                                true
                            })
                        })
                        .await;
                    if let Ok(r) = failed {
                        if state(&r) == S::Failed {
                            self.after_end(&r);
                        }
                    }
                    return;
                }
                Err(e) => {
                    tracing::info!("node not reachable, retrying in {pause:?}: {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// One `RunContainer` of the record's current run, adopting or replacing a copy the
    /// node already has.
    async fn run_on_node(
        self: &Arc<Self>,
        record: &v1::Container,
    ) -> Result<v1::Container, ClusterError> {
        let node = &record.node;
        let mut client = self.client_for(node)?;
        let mut spec = record.spec.clone().unwrap_or_default();
        self.ensure_rootfs(node, &spec.rootfs).await?;
        let slots = self.dispatch_slots(node);
        let _slot = slots
            .acquire()
            .await
            .map_err(|_| ClusterError::Unavailable(format!("node '{node}' is being forgotten")))?;
        spec.labels
            .insert(ATTEMPT_LABEL.into(), record.restart_count.to_string());
        let agent_id = records::current_agent_id(record);
        // The container's hostname is its cluster name, not the id of this run's copy.
        let hostname_ok = record
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.');
        let has_uts =
            spec.namespaces.is_empty() || spec.namespaces.contains(&(v1::Namespace::Uts as i32));
        if spec.hostname.is_empty() && hostname_ok && has_uts {
            spec.hostname = record.name.clone();
        }
        // The controller removes the record and the copy together; the agent must not
        // remove its copy on its own.
        spec.auto_remove = false;
        let run = |client: &mut hutch_proto::v1::agent_client::AgentClient<_>| {
            let mut request = tonic::Request::new(v1::RunContainerRequest {
                name: agent_id.clone(),
                spec: Some(spec.clone()),
            });
            request.set_timeout(RUN_TIMEOUT);
            let mut client = client.clone();
            async move { client.run_container(request).await }
        };
        match run(&mut client).await {
            Ok(r) => Ok(r.into_inner()),
            // Sent before (a retry, or a controller restart): the copy is this run's.
            Err(s) if s.code() == tonic::Code::AlreadyExists => client
                .get_container(v1::GetContainerRequest { id: agent_id })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| node_error(node, s)),
            Err(s) => Err(node_error(node, s)),
        }
    }

    /// Builds the rootfs on the node first when the node lacks it and the cluster knows
    /// how to build it.
    async fn ensure_rootfs(self: &Arc<Self>, node: &str, rootfs: &str) -> Result<(), ClusterError> {
        // An image reference is imported under its derived name, with a build's time limit.
        let image = hutch_core::image_ref::looks_like_image(rootfs).then(|| v1::RootfsSpec {
            name: hutch_core::image_ref::ImageRef::rootfs_name(rootfs),
            source: Some(v1::rootfs_spec::Source::Image(v1::ImageSource {
                reference: rootfs.to_string(),
                ..Default::default()
            })),
        });
        let rootfs = image.as_ref().map_or(rootfs, |s| s.name.as_str());
        let spec = {
            let st = self.lock();
            let has = st
                .nodes
                .get(node)
                .is_some_and(|e| e.record.rootfs.iter().any(|r| r == rootfs));
            if has {
                return Ok(());
            }
            image
                .clone()
                .or_else(|| st.rootfs_specs.get(rootfs).cloned())
        };
        let Some(spec) = spec else { return Ok(()) };
        tracing::info!(%node, %rootfs, "building the rootfs on the node before the run");
        let mut client = self.client_for(node)?;
        let mut request = tonic::Request::new(v1::BuildRootfsRequest { rootfs: Some(spec) });
        request.set_timeout(BUILD_TIMEOUT);
        let mut stream = client
            .build_rootfs(request)
            .await
            .map_err(|s| node_error(node, s))?
            .into_inner();
        while let Some(msg) = stream.next().await {
            msg.map_err(|s| node_error(node, image_failure_is_final(s)))?;
        }
        self.node_has_rootfs(node, rootfs);
        Ok(())
    }

    /// Brings the record up to date with the node's view of its copy (a run's answer, a
    /// stop's answer, reconciliation), when that copy is the record's current run.
    pub(crate) async fn apply_agent_view(
        self: &Arc<Self>,
        node: &str,
        view: v1::Container,
    ) -> Result<(), ClusterError> {
        let node = node.to_string();
        let updated = self
            .commit_blocking(move |c| {
                let Some((name, run)) = records::parse_agent_id(&view.name) else {
                    return c.get(&view.name);
                };
                c.update_on_node(name, &node, |r| {
                    let current = r.node == node && r.restart_count == run;
                    // The same state again is a fuller view (the run's answer carries the
                    // pid and namespaces that its RUNNING event does not).
                    let same = state(r) == state(&view);
                    if !current || !(same || moves_forward(state(r), state(&view))) {
                        return false;
                    }
                    let before = r.clone();
                    let was_lost = state(r) == S::Lost;
                    records::merge_agent_view(r, &view);
                    r.status_message = records::describe(r);
                    if was_lost {
                        r.status_message = format!("node {node} is back: {}", r.status_message);
                    }
                    *r != before
                })
            })
            .await?;
        if is_final(state(&updated)) {
            self.after_end(&updated);
        }
        Ok(())
    }

    /// Follows the agent's event stream from the last event applied, reconnecting with
    /// backoff, until the node registers again or goes down (which abort this task).
    pub(crate) async fn follow_events(self: Arc<Self>, node: String) {
        let mut pause = RETRY_FIRST;
        loop {
            let since = match self.node(&node) {
                Ok(n) => n.last_event_seq,
                Err(_) => return,
            };
            let stream = match self.client_for(&node) {
                Ok(mut client) => client
                    .events(v1::EventsRequest { since_seq: since })
                    .await
                    .map(tonic::Response::into_inner),
                Err(e) => Err(tonic::Status::unavailable(e.to_string())),
            };
            let stream = match stream {
                Err(s) if s.code() == tonic::Code::OutOfRange => {
                    self.skip_compacted_events(&node, &s).await;
                    continue;
                }
                other => other,
            };
            match stream {
                Ok(mut stream) => {
                    pause = RETRY_FIRST;
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(event) => {
                                let n = node.clone();
                                let applied = self
                                    .commit_blocking(move |c| c.apply_agent_event(&n, event))
                                    .await;
                                match applied {
                                    Ok(Some(r)) if is_final(state(&r)) => self.after_end(&r),
                                    Ok(Some(r)) if records::turned_unhealthy(&r) => {
                                        self.stop_unhealthy(&r)
                                    }
                                    Ok(_) => {}
                                    Err(e) => {
                                        tracing::error!(%node, "applying an agent event: {e}");
                                        break;
                                    }
                                }
                            }
                            Err(s) if s.code() == tonic::Code::OutOfRange => {
                                self.skip_compacted_events(&node, &s).await;
                                break;
                            }
                            Err(s) => {
                                tracing::info!(%node, "event stream ended: {s}");
                                break;
                            }
                        }
                    }
                }
                Err(s) => tracing::info!(%node, "cannot follow events yet: {s}"),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// The agent no longer keeps the events after our last one (its log was compacted while
    /// the controller was away): continue from its newest event, and reconcile to learn what
    /// the skipped ones said.
    async fn skip_compacted_events(self: &Arc<Self>, node: &str, status: &tonic::Status) {
        tracing::warn!(%node, "events were compacted on the node ({}); reconciling", status.message());
        let info = match self.client_for(node) {
            Ok(mut client) => client.node_info(v1::NodeInfoRequest {}).await,
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        match info {
            Ok(info) => {
                let newest = info.into_inner().last_event_seq;
                if let Some(e) = self.lock().nodes.get_mut(node) {
                    e.record.last_event_seq = newest;
                }
                tokio::spawn(self.clone().reconcile(node.to_string()));
            }
            Err(s) => {
                tracing::info!(%node, "cannot ask the node for its newest event: {s}");
                tokio::time::sleep(RETRY_MAX).await;
            }
        }
    }

    /// Applies one agent event; returns the record when it changed. The node's last event
    /// is persisted together with a record change (an event that changes nothing is only
    /// remembered in memory: replaying it after a restart changes nothing either).
    fn apply_agent_event(
        &self,
        node: &str,
        event: v1::Event,
    ) -> Result<Option<v1::Container>, ClusterError> {
        let mut st = self.lock();
        let Some(entry) = st.nodes.get_mut(node) else {
            return Ok(None);
        };
        if event.seq <= entry.record.last_event_seq {
            return Ok(None);
        }
        let mut node_record = entry.record.clone();
        node_record.last_event_seq = event.seq;
        // An event that changes no record only advances the node's seq in memory; one that
        // does is committed together with the new seq, so a failed commit replays it.
        let changed = records::parse_agent_id(&event.container_id).and_then(|(name, run)| {
            let record = st.containers.get(name)?;
            let update = S::try_from(event.state).unwrap_or(S::Unspecified);
            let applies = !event.removed
                && record.node == node
                && record.restart_count == run
                && (moves_forward(state(record), update)
                    || (state(record) == update && event.health != record.health));
            applies.then(|| record.clone())
        });
        let Some(mut record) = changed else {
            if let Some(entry) = st.nodes.get_mut(node) {
                entry.record.last_event_seq = event.seq;
            }
            return Ok(None);
        };
        let was_lost = state(&record) == S::Lost;
        records::merge_agent_event(&mut record, &event);
        record.status_message = records::describe(&record);
        if was_lost {
            record.status_message = format!(
                "node {node} is back; while it was away the container: {}",
                event.details
            );
        }
        let mut out = self.commit(
            &mut st,
            vec![
                Change::Container(WatchEventType::Updated, record),
                Change::Node(node_record),
            ],
        )?;
        Ok(out.pop())
    }

    /// Compares what the node runs with the records after it (re)registered: copies of the
    /// current run update their record, copies the records do not point at are stopped and
    /// removed, SCHEDULED records are dispatched again, and records whose copy the node no
    /// longer has are LOST.
    pub(crate) async fn reconcile(self: Arc<Self>, node: String) {
        let span = tracing::info_span!("reconcile", node = %node);
        tracing::Instrument::instrument(self.reconcile_node(node), span).await
    }

    async fn reconcile_node(self: Arc<Self>, node: String) {
        let revision_before = self.revision();
        let listed = match self.client_for(&node) {
            Ok(mut client) => every_container(&mut client)
                .await
                .map_err(|s| s.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let copies = match listed {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("cannot list the node's containers: {e}");
                return;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for copy in copies {
            if !is_ours(&copy) {
                continue; // Not started by the controller (an admin's local container).
            }
            let Some((name, run)) = records::parse_agent_id(&copy.name) else {
                continue;
            };
            let (name, copy_id) = (name.to_string(), copy.name.clone());
            let record = self.get(&name).ok();
            let current = record
                .as_ref()
                .is_some_and(|r| r.node == node && r.restart_count == run);
            // The previous run's copy, kept for `logs --previous`, once it has ended.
            let previous = record.as_ref().is_some_and(|r| {
                r.previous_node == node && run + 1 == r.restart_count && is_final(state(&copy))
            });
            if previous {
                continue;
            }
            if current {
                seen.insert(name);
                if let Err(e) = self.apply_agent_view(&node, copy).await {
                    tracing::error!("reconciling: {e}");
                }
                continue;
            }
            // A stale copy: its record is gone, or moved on to another node or run.
            let running = !is_final(state(&copy));
            tracing::warn!(container = %copy_id, running, "removing a stale copy");
            if let Ok(mut client) = self.client_for(&node) {
                if let Err(s) = client
                    .remove_container(v1::RemoveContainerRequest {
                        id: copy_id.clone(),
                        force: true,
                    })
                    .await
                {
                    tracing::warn!(container = %copy_id, "removing a stale copy: {s}");
                    continue;
                }
            }
            if running && record.is_some() {
                let note = format!(
                    "stopped and removed a stale copy of run {run} on node {node}, which came back"
                );
                let noted = self
                    .commit_blocking(move |c| {
                        c.update(&name, |r| {
                            r.status_message = note;
                            true
                        })
                    })
                    .await;
                if let Err(e) = noted {
                    tracing::error!("recording a stale copy: {e}");
                }
            }
        }
        // Records on this node whose copy the node does not have.
        let missing: Vec<v1::Container> = {
            let st = self.lock();
            st.containers
                .values()
                .filter(|c| c.node == node && !seen.contains(&c.name))
                .filter(|c| matches!(state(c), S::Scheduled | S::Preparing | S::Running))
                .filter(|c| c.revision <= revision_before && !st.inflight.contains(&c.name))
                .cloned()
                .collect()
        };
        for c in missing {
            if state(&c) == S::Scheduled {
                self.spawn_dispatch(&c);
                continue;
            }
            let name = c.name.clone();
            let n = node.clone();
            let lost = self
                .commit_blocking(move |cl| {
                    cl.update(&name, |r| {
                        if r.node != n || r.revision != c.revision {
                            return false;
                        }
                        r.state = S::Lost as i32;
                        r.pid = 0;
                        r.status_message = format!("node {n} no longer has the container");
                        true
                    })
                })
                .await;
            match lost {
                Ok(r) if state(&r) == S::Lost => self.after_end(&r),
                Ok(_) => {}
                Err(e) => tracing::error!("recording a lost container: {e}"),
            }
        }
    }
}

/// Every container an agent has, page after page. A node that answers pages without end
/// (a token that does not move on, or more pages than any node holds) is cut off.
async fn every_container(client: &mut AgentRpc) -> Result<Vec<v1::Container>, tonic::Status> {
    const MAX_PAGES: usize = 1000;
    let mut all = Vec::new();
    let mut request = v1::ListContainersRequest::default();
    for _ in 0..MAX_PAGES {
        let page = client.list_containers(request.clone()).await?.into_inner();
        all.extend(page.containers);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        if page.next_page_token == request.page_token {
            break;
        }
        request.page_token = page.next_page_token;
    }
    Err(tonic::Status::out_of_range(
        "the node's list of containers does not end (its page tokens do not move on)",
    ))
}

#[cfg(test)]
mod tests {
    use super::{failure_of, start_slots, DISPATCH_MAX, DISPATCH_UNKNOWN_CPUS};

    #[test]
    fn the_agents_failing_step_is_kept() {
        let f = failure_of("container 'x.0' failed to start at step 'exec': '/nope' does not exist in the container");
        assert_eq!(f.step, "exec");
        assert_eq!(f.message, "'/nope' does not exist in the container");
        assert_eq!(failure_of("no route").step, "start");
    }

    #[test]
    fn starts_in_flight_follow_the_nodes_cpus() {
        assert_eq!(start_slots(1), 2);
        assert_eq!(start_slots(2), 4);
        assert_eq!(start_slots(16), 32);
        assert_eq!(start_slots(500), DISPATCH_MAX);
        assert_eq!(start_slots(u32::MAX), DISPATCH_MAX);
        assert_eq!(start_slots(0), DISPATCH_UNKNOWN_CPUS);
    }
}
