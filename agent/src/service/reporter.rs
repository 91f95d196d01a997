//! Turns container state changes into events. The supervisor records what happened on disk;
//! the reporter compares that with what was last reported for the container (a small
//! `reported.json` in its state directory) and appends an event for each difference, so that
//! nothing is lost across agent restarts: on start, [`Reporter::reconcile`] reports what
//! changed while the agent was away and watches every running container again.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::events::{EventLog, NewEvent, Staged};
use crate::fsutil::{read_json, replace_json};
use crate::runtime::state::Status;
use crate::runtime::{ContainerInfo, Runtime};
use hutch_core::health::HealthState;

/// In a container's state directory: what was last reported of it.
const REPORTED_FILE: &str = "reported.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Reported {
    status: Status,
    #[serde(default)]
    health: Option<HealthState>,
}

/// Appends container events to the log, once per state change.
pub struct Reporter {
    runtime: Arc<Runtime>,
    events: Arc<EventLog>,
    /// Held while a report is decided and staged, so reports are recorded in the order
    /// they were decided; the wait for the disk is outside it.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Per container: the state last staged as an event and the event's seq, until the
    /// event is durable and `reported.json` says so.
    staged: std::sync::Mutex<std::collections::HashMap<String, (Reported, u64)>>,
}

/// A container's state staged as an event, for [`Reporter::settle`].
struct StagedState<'a> {
    staged: Staged<'a>,
    id: String,
    marker: std::path::PathBuf,
    reported: Reported,
}

/// A report's place in the order of reports (see [`Reporter::take_turn`]).
pub struct Turn {
    _held: tokio::sync::OwnedMutexGuard<()>,
}

/// A one-line summary of a container's state, for an event.
pub fn summary(info: &ContainerInfo) -> String {
    let st = &info.state;
    match st.status {
        Status::Created => "preparing".into(),
        Status::Running => format!("running as pid {}", st.pid.unwrap_or(0)),
        Status::Exited | Status::OomKilled => {
            let mut how = match (st.exit_code, st.signal) {
                (Some(c), _) => format!("exited with code {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => "ended".into(),
            };
            if let Some(p) = info.pids.filter(|p| p.limit_hits > 0) {
                let limit = p.limit.map_or("none".into(), |l| l.to_string());
                how.push_str(&format!(
                    "; {} forks refused at the pids limit ({limit})",
                    p.limit_hits
                ));
            }
            if st.oom_killed {
                let limit = info
                    .spec
                    .memory_limit_bytes
                    .map(|l| format!("{l} bytes"))
                    .unwrap_or_else(|| "none".into());
                format!("{how}; OOM-killed (memory limit {limit})")
            } else {
                how
            }
        }
        Status::Failed => st
            .failure
            .as_ref()
            .map(|f| format!("failed at {}: {}", f.step, f.message))
            .unwrap_or_else(|| "failed".into()),
    }
}

/// The event describing `info`'s current state.
pub fn event_of(info: &ContainerInfo, removed: bool) -> NewEvent {
    NewEvent {
        container_id: info.state.id.clone(),
        status: info.state.status,
        details: if removed {
            "removed".into()
        } else {
            summary(info)
        },
        exit_code: info.state.exit_code,
        signal: info.state.signal,
        oom_killed: info.state.oom_killed,
        removed,
        health: info.health.clone(),
        timeline: (info.state.timeline != Default::default()).then_some(info.state.timeline),
    }
}

impl Reporter {
    /// A reporter over `runtime`'s containers into `events`.
    pub fn new(runtime: Arc<Runtime>, events: Arc<EventLog>) -> Arc<Self> {
        Arc::new(Reporter {
            runtime,
            events,
            lock: Arc::new(tokio::sync::Mutex::new(())),
            staged: Default::default(),
        })
    }

    /// Reports `info`'s state unless it was already reported.
    pub async fn report(&self, info: &ContainerInfo) {
        let staged = {
            let _guard = self.lock.lock().await;
            self.stage_state(info)
        };
        if let Some(staged) = staged {
            self.settle(staged).await;
        }
    }

    /// Reports a started container's RUNNING unless a later state of it (a stop's EXITED)
    /// was reported meanwhile, then watches it until it ends, which is then reported after
    /// the RUNNING. Nothing is reported or watched when the container was removed meanwhile
    /// (a run under the same id since is another run).
    ///
    /// A run's answer carries RUNNING to the controller at once; this records the same
    /// durably as an event right after, off the answer's path.
    pub fn report_started(self: &Arc<Self>, started: ContainerInfo) {
        let me = self.clone();
        tokio::spawn(async move {
            let id = started.state.id.clone();
            let staged = {
                let _guard = me.lock.lock().await;
                // Removed, and maybe run again under the same id, meanwhile: that run is
                // another's to report and watch.
                let same_run = me.runtime.get(&id).is_ok_and(|now| {
                    (now.state.supervisor_pid, now.state.started_ms)
                        == (started.state.supervisor_pid, started.state.started_ms)
                });
                if !same_run {
                    return;
                }
                let ended = me.last_reported(&id).is_some_and(|r| r.status.is_final());
                (!ended).then(|| me.stage_state(&started)).flatten()
            };
            // Staged: its end, reported by the watch, is recorded after it.
            me.watch(id);
            if let Some(staged) = staged {
                me.settle(staged).await;
            }
        });
    }

    /// What was last reported (or staged) of container `id`.
    fn last_reported(&self, id: &str) -> Option<Reported> {
        if let Some((reported, _)) = lock_staged(&self.staged).get(id) {
            return Some(*reported);
        }
        let dir = self.runtime.existing_dir(id).ok()?;
        read_json(&dir.join(REPORTED_FILE)).ok()
    }

    /// Stages `info`'s state as an event unless it was the last reported or staged; under
    /// `self.lock`.
    fn stage_state(&self, info: &ContainerInfo) -> Option<StagedState<'_>> {
        let id = info.state.id.clone();
        let dir = self.runtime.existing_dir(&id).ok()?;
        let now = Reported {
            status: info.state.status,
            health: info.health.as_ref().map(|h| h.state),
        };
        if self.last_reported(&id) == Some(now) {
            return None;
        }
        match self.events.stage(event_of(info, false)) {
            Ok(staged) => {
                lock_staged(&self.staged).insert(id.clone(), (now, staged.seq()));
                Some(StagedState {
                    staged,
                    id,
                    marker: dir.join(REPORTED_FILE),
                    reported: now,
                })
            }
            Err(e) => {
                tracing::error!(container = %id, error = %e, "cannot record an event");
                None
            }
        }
    }

    /// Waits until a staged state is durable, then records it as reported, unless a later
    /// state of the container was staged meanwhile (that one will).
    async fn settle(&self, state: StagedState<'_>) {
        let seq = state.staged.seq();
        let durable = state.staged.durable().await;
        {
            // The marker is written before the entry goes, so a report deciding meanwhile
            // sees this state in one or the other.
            let mut staged = lock_staged(&self.staged);
            if staged.get(&state.id).is_some_and(|(_, s)| *s == seq) {
                if durable.is_ok() {
                    if let Err(e) = replace_json(&state.marker, &state.reported) {
                        tracing::warn!(container = %state.id, error = %e, "cannot record the reported state");
                    }
                }
                // Failed: not marked reported, so the next report of it stages it again.
                staged.remove(&state.id);
            }
        }
        match durable {
            Ok(event) => {
                tracing::debug!(container = %state.id, seq = event.seq, "event recorded")
            }
            Err(e) => {
                tracing::error!(container = %state.id, error = %e, "cannot record an event")
            }
        }
    }

    /// Reports an event that is not a state of an existing container (a failed start, a
    /// removal).
    pub async fn report_event(&self, event: NewEvent) {
        let turn = self.take_turn().await;
        self.report_event_in_turn(turn, event).await;
    }

    /// Takes the next place among the reports, for [`Reporter::report_event_in_turn`]: no
    /// report asked for later is recorded before that one.
    pub async fn take_turn(&self) -> Turn {
        Turn {
            _held: self.lock.clone().lock_owned().await,
        }
    }

    /// Reports `event` in the place `turn` took (its caller may answer before: the event
    /// keeps its place all the same).
    pub async fn report_event_in_turn(&self, turn: Turn, event: NewEvent) {
        if event.removed {
            // That run is over: a state of it still waiting for the disk must not stand for
            // a new run under the same id (nor write its marker into that run's directory).
            lock_staged(&self.staged).remove(&event.container_id);
        }
        let staged = self.events.stage(event);
        drop(turn);
        if let Err(e) = match staged {
            Ok(staged) => staged.durable().await.map(drop),
            Err(e) => Err(e),
        } {
            tracing::error!(error = %e, "cannot record an event");
        }
    }

    /// Watches container `id` until it ends and reports its final state; then removes it
    /// when its spec says `auto_remove` (reported as a removal event). Runs its health
    /// checks meanwhile, when it has one.
    pub fn watch(self: &Arc<Self>, id: String) {
        super::health::spawn(self.clone(), self.runtime.clone(), id.clone());
        let me = self.clone();
        tokio::spawn(async move {
            // Reported as soon as the exit is recorded, while the supervisor cleans up.
            match me.runtime.wait_ended(&id).await {
                Ok(info) => {
                    me.report(&info).await;
                    if info.spec.auto_remove {
                        me.auto_remove(&info).await;
                    }
                }
                Err(e) => tracing::debug!(container = %id, error = %e, "stopped watching"),
            }
        });
    }

    /// Removes an ended `auto_remove` container and reports it.
    async fn auto_remove(&self, info: &ContainerInfo) {
        let id = &info.state.id;
        match self.runtime.remove(id, true).await {
            Ok(()) => {
                tracing::info!(container = %id, "removed when it ended (auto_remove)");
                self.report_event(event_of(info, true)).await;
            }
            Err(e) => tracing::error!(container = %id, error = %e, "auto_remove"),
        }
    }

    /// Reports every change that happened while no one watched, and watches every container
    /// that is still running.
    pub async fn reconcile(self: &Arc<Self>) {
        for info in self.runtime.list() {
            self.report(&info).await;
            if !info.state.status.is_final() {
                self.watch(info.state.id.clone());
            } else if info.spec.auto_remove {
                // It ended while no one watched.
                self.auto_remove(&info).await;
            }
        }
    }
}

/// The map of staged states, also after a panic elsewhere (entries are inserted or removed
/// whole).
fn lock_staged<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
