//! Pure rules over container records: which states hold a reservation, which updates from an
//! agent move a record forward, when the restart policy asks for another run and after how
//! long. No I/O, no locks; unit-tested.

use std::time::Duration;

use hutch_proto::v1::{self, restart_policy::Kind, ContainerState as S};

/// Label on the agent's copy of a container: which run of the record it is. It also marks
/// the copy as the controller's (an admin's local containers do not carry it).
pub const ATTEMPT_LABEL: &str = "hutch.attempt";

/// Longest container name: the agent's copy is `NAME.RUN`, and agent ids are at most 63
/// characters.
pub const MAX_NAME_LEN: usize = 52;

/// The id of the agent's copy of run `attempt` of container `name`.
pub fn agent_id(name: &str, attempt: u32) -> String {
    format!("{name}.{attempt}")
}

/// The agent's copy of the record's current run.
pub fn current_agent_id(c: &v1::Container) -> String {
    agent_id(&c.name, c.restart_count)
}

/// The agent id of the previous run's copy, when a node keeps one (`previous_node`).
pub fn previous_copy(c: &v1::Container) -> Option<String> {
    (!c.previous_node.is_empty() && c.restart_count > 0)
        .then(|| agent_id(&c.name, c.restart_count - 1))
}

/// The container name and run of an agent's copy, when the id has that form.
pub fn parse_agent_id(id: &str) -> Option<(&str, u32)> {
    let (name, run) = id.rsplit_once('.')?;
    Some((name, run.parse().ok()?))
}

/// A one-line description of the record's state, for its status message.
pub fn describe(c: &v1::Container) -> String {
    match state(c) {
        S::Running => format!("running on {} as pid {}", c.node, c.pid),
        S::Exited => match (c.exit_code, c.signal) {
            (Some(code), _) => format!("exited with code {code} on {}", c.node),
            (None, Some(sig)) => format!("killed by signal {sig} on {}", c.node),
            _ => format!("ended on {}", c.node),
        },
        S::OomKilled => format!("OOM-killed on {}", c.node),
        S::Failed => match &c.failure {
            Some(f) => format!("failed on {} at {}: {}", c.node, f.step, f.message),
            None => format!("failed on {}", c.node),
        },
        other => format!("{} on {}", other.as_str_name(), c.node),
    }
}

/// The record's state as the enum.
pub fn state(c: &v1::Container) -> S {
    S::try_from(c.state).unwrap_or(S::Unspecified)
}

/// The container has ended (on its own, by a signal, OOM, failure to start).
pub fn is_final(s: S) -> bool {
    matches!(s, S::Exited | S::OomKilled | S::Failed)
}

/// The named volumes a record mounts.
pub fn volumes_of(record: &v1::Container) -> impl Iterator<Item = &str> {
    record
        .spec
        .iter()
        .flat_map(|s| s.mounts.iter())
        .filter(|m| m.r#type == v1::mount::Type::Volume as i32)
        .map(|m| m.source.as_str())
}

/// The thousandths of CPUs a record reserves: its CPU limit (already validated at create).
pub fn cpu_millicores_of(record: &v1::Container) -> u64 {
    record
        .spec
        .as_ref()
        .and_then(|s| s.cpu.as_ref())
        .and_then(|c| {
            hutch_core::cpu::millicores_from_cores(c.cores)
                .ok()
                .flatten()
        })
        .map_or(0, u64::from)
}

/// What a placed record holds on its node; `ports` are its [`ports_of`].
pub fn claim_of<'a>(
    record: &v1::Container,
    ports: &'a [hutch_core::network::PortMapping],
) -> crate::scheduler::Claim<'a> {
    crate::scheduler::Claim {
        memory_bytes: record.reserved_memory_bytes,
        cpu_millicores: cpu_millicores_of(record),
        ports,
    }
}

/// The host ports a record publishes (already validated at create).
pub fn ports_of(record: &v1::Container) -> Vec<hutch_core::network::PortMapping> {
    record
        .spec
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| {
            n.ports
                .iter()
                .filter_map(|p| hutch_core::convert::port_from(p, "port").ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The container has memory (and its host ports) set aside on its node.
pub fn holds_reservation(s: S) -> bool {
    matches!(s, S::Scheduled | S::Preparing | S::Running)
}

/// Order along the lifecycle; an update never moves a record backwards.
fn rank(s: S) -> u8 {
    match s {
        S::Unspecified => 0,
        S::Pending => 1,
        S::Scheduled => 2,
        S::Preparing => 3,
        S::Running => 4,
        S::Exited | S::OomKilled | S::Failed => 5,
        S::Lost => 6,
    }
}

/// Whether the agent reporting `update` for this record should change it: the update is
/// further along than the record, or the record was LOST and its node tells what really
/// became of it.
pub fn moves_forward(record: S, update: S) -> bool {
    if update == S::Unspecified || update == S::Lost {
        return false;
    }
    if record == S::Lost {
        return update == S::Running || is_final(update);
    }
    rank(update) > rank(record)
}

/// Copies what the agent knows of its copy of the container into the record: state, exit,
/// failure, pid, namespaces, memory and times. The controller's own fields stay.
pub fn merge_agent_view(record: &mut v1::Container, agent: &v1::Container) {
    let was = record.state;
    record.state = agent.state;
    record.exit_code = agent.exit_code;
    record.signal = agent.signal;
    record.oom_killed = agent.oom_killed;
    record.failure = agent.failure.clone();
    record.pid = agent.pid;
    if !agent.namespaces.is_empty() {
        record.namespaces = agent.namespaces.clone();
    }
    if agent.memory.is_some() {
        record.memory = agent.memory;
    }
    if agent.pids.is_some() {
        record.pids = agent.pids;
    }
    if agent.network.is_some() {
        record.network = agent.network.clone();
    }
    if agent.health.is_some() && !older_health(agent.health.as_ref(), record.health.as_ref()) {
        record.health = agent.health.clone();
    }
    record.started_at = agent.started_at.or(record.started_at);
    record.finished_at = agent.finished_at.or(record.finished_at);
    take_timeline(record, was, agent.start_timeline);
    if !agent.rootfs_key.is_empty() {
        record.rootfs_key = agent.rootfs_key.clone();
    }
}

/// Whether a view's health is older than the record's: a run's answer or a listing taken
/// before a check whose event has since been applied. Both come from the node's clock;
/// a status without a check yet is older than any check.
fn older_health(view: Option<&v1::HealthStatus>, record: Option<&v1::HealthStatus>) -> bool {
    let checked =
        |h: Option<&v1::HealthStatus>| h.and_then(|h| h.last_check).map(|t| (t.seconds, t.nanos));
    checked(view) < checked(record)
}

/// Takes the node's start timeline into the record, keeping the controller's own instant,
/// and stamps that instant when the record becomes RUNNING (from a run's answer or an
/// event, whichever comes first; a record already RUNNING, say from before an upgrade,
/// gets none).
fn take_timeline(record: &mut v1::Container, was: i32, node: Option<v1::StartTimeline>) {
    let running = S::Running as i32;
    let controller_running = record
        .start_timeline
        .and_then(|t| t.controller_running)
        .or_else(|| {
            (record.state == running && was != running)
                .then(|| hutch_core::convert::timestamp(std::time::SystemTime::now()))
        });
    if let Some(node) = node {
        record.start_timeline = Some(node);
    }
    if let Some(at) = controller_running {
        record
            .start_timeline
            .get_or_insert_with(Default::default)
            .controller_running = Some(at);
    }
}

/// Applies one agent event to the record.
pub fn merge_agent_event(record: &mut v1::Container, event: &v1::Event) {
    let was = record.state;
    record.state = event.state;
    take_timeline(record, was, event.start_timeline);
    if event.health.is_some() {
        record.health = event.health.clone();
    }
    if is_final(S::try_from(event.state).unwrap_or(S::Unspecified)) {
        record.exit_code = event.exit_code;
        record.signal = event.signal;
        record.oom_killed = event.oom_killed;
        record.finished_at = event.time.or(record.finished_at);
        record.pid = 0;
    } else if record.started_at.is_none() {
        record.started_at = event.time;
    }
    if !event.details.is_empty() {
        record.status_message = event.details.clone();
    }
}

/// Clears what belonged to the previous run before the record starts another one.
pub fn reset_for_new_run(record: &mut v1::Container) {
    record.state = S::Pending as i32;
    record.exit_code = None;
    record.signal = None;
    record.oom_killed = false;
    record.failure = None;
    record.pid = 0;
    record.namespaces.clear();
    record.memory = None;
    record.pids = None;
    record.network = None;
    record.started_at = None;
    record.finished_at = None;
    record.start_timeline = None;
    record.health = None;
    record.node.clear();
}

/// Whether the record's health checks have just found it unhealthy while it runs.
pub fn turned_unhealthy(c: &v1::Container) -> bool {
    state(c) == S::Running
        && c.health
            .as_ref()
            .is_some_and(|h| h.state == v1::HealthState::Unhealthy as i32)
}

/// The run ended badly: non-zero exit, a signal, an OOM kill, a failure to start, or its
/// node was lost.
pub fn ended_in_failure(c: &v1::Container) -> bool {
    match state(c) {
        S::OomKilled | S::Failed | S::Lost => true,
        S::Exited => c.exit_code != Some(0) || c.signal.is_some() || c.oom_killed,
        _ => false,
    }
}

/// Whether the restart policy asks for another run of an ended (or lost) container.
/// `evicted` is set for a container stopped by a drain, which counts as a failure.
pub fn wants_restart(c: &v1::Container, evicted: bool) -> bool {
    if c.stop_requested {
        return false;
    }
    let policy = c.restart_policy.unwrap_or_default();
    let retries_left = policy.max_retries == 0 || c.restart_count < policy.max_retries;
    match Kind::try_from(policy.kind).unwrap_or(Kind::Unspecified) {
        Kind::Always => retries_left,
        Kind::OnFailure => retries_left && (evicted || ended_in_failure(c)),
        Kind::Never | Kind::Unspecified => false,
    }
}

/// Delay before restart number `restarts + 1`: `base` doubled per restart, at most `max`.
pub fn restart_backoff(base: Duration, max: Duration, restarts: u32) -> Duration {
    base.saturating_mul(1u32 << restarts.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(state: S, exit: Option<i32>, kind: Kind, max: u32, restarts: u32) -> v1::Container {
        v1::Container {
            state: state as i32,
            exit_code: exit,
            restart_policy: Some(v1::RestartPolicy {
                kind: kind as i32,
                max_retries: max,
            }),
            restart_count: restarts,
            ..Default::default()
        }
    }

    #[test]
    fn a_view_older_than_the_last_health_event_keeps_the_health() {
        let health = |state: v1::HealthState, at: Option<i64>| v1::HealthStatus {
            state: state as i32,
            last_check: at.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            ..Default::default()
        };
        let running = |h: v1::HealthStatus| v1::Container {
            state: S::Running as i32,
            health: Some(h),
            ..Default::default()
        };
        // The healthy event came in first; the run's answer (no check yet) comes late.
        let mut record = running(health(v1::HealthState::Healthy, Some(10)));
        merge_agent_view(
            &mut record,
            &running(health(v1::HealthState::Starting, None)),
        );
        assert_eq!(
            record.health,
            Some(health(v1::HealthState::Healthy, Some(10)))
        );
        // A listing of an earlier check does not undo a later one either.
        merge_agent_view(
            &mut record,
            &running(health(v1::HealthState::Starting, Some(9))),
        );
        assert_eq!(
            record.health,
            Some(health(v1::HealthState::Healthy, Some(10)))
        );
        // A later check is taken, and so is the same one again.
        let later = health(v1::HealthState::Unhealthy, Some(11));
        merge_agent_view(&mut record, &running(later.clone()));
        assert_eq!(record.health, Some(later.clone()));
        merge_agent_view(&mut record, &running(later.clone()));
        assert_eq!(record.health, Some(later));
    }

    #[test]
    fn agent_ids_carry_the_run() {
        assert_eq!(agent_id("web.1", 3), "web.1.3");
        assert_eq!(parse_agent_id("web.1.3"), Some(("web.1", 3)));
        assert_eq!(parse_agent_id("web"), None);
        assert_eq!(parse_agent_id("web.x"), None);
    }

    #[test]
    fn updates_only_move_forward() {
        assert!(moves_forward(S::Scheduled, S::Running));
        assert!(moves_forward(S::Running, S::Exited));
        assert!(!moves_forward(S::Exited, S::Running));
        assert!(!moves_forward(S::Running, S::Running));
        assert!(!moves_forward(S::Exited, S::OomKilled));
        assert!(moves_forward(S::Lost, S::Exited));
        assert!(moves_forward(S::Lost, S::Running));
        assert!(!moves_forward(S::Running, S::Lost));
    }

    #[test]
    fn restart_policy_as_named() {
        assert!(!wants_restart(
            &with(S::Exited, Some(1), Kind::Never, 0, 0),
            false
        ));
        assert!(wants_restart(
            &with(S::Exited, Some(1), Kind::OnFailure, 0, 0),
            false
        ));
        assert!(!wants_restart(
            &with(S::Exited, Some(0), Kind::OnFailure, 0, 0),
            false
        ));
        assert!(wants_restart(
            &with(S::Exited, Some(0), Kind::OnFailure, 0, 0),
            true
        ));
        assert!(wants_restart(
            &with(S::Lost, None, Kind::OnFailure, 3, 2),
            false
        ));
        assert!(!wants_restart(
            &with(S::Lost, None, Kind::OnFailure, 3, 3),
            false
        ));
        assert!(wants_restart(
            &with(S::Exited, Some(0), Kind::Always, 0, 7),
            false
        ));
        let mut stopped = with(S::Exited, Some(137), Kind::Always, 0, 0);
        stopped.stop_requested = true;
        assert!(!wants_restart(&stopped, false));
        assert!(!wants_restart(&v1::Container::default(), false));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        assert_eq!(restart_backoff(base, max, 0), base);
        assert_eq!(restart_backoff(base, max, 2), Duration::from_millis(400));
        assert_eq!(restart_backoff(base, max, 40), max);
    }

    #[test]
    fn a_new_run_forgets_the_old_one() {
        let mut c = with(S::Exited, Some(3), Kind::Always, 0, 0);
        c.node = "n1".into();
        c.pid = 42;
        reset_for_new_run(&mut c);
        assert_eq!(state(&c), S::Pending);
        assert_eq!(c.exit_code, None);
        assert!(c.node.is_empty());
        assert_eq!(c.pid, 0);
    }

    #[test]
    fn the_nodes_start_timeline_is_kept_until_the_next_run() {
        let timeline = v1::StartTimeline {
            agent_received: Some(hutch_core::convert::timestamp_us(1_000)),
            init_exec: Some(hutch_core::convert::timestamp_us(3_000)),
            ..Default::default()
        };
        let mut record = v1::Container::default();
        let agent = v1::Container {
            state: S::Running as i32,
            start_timeline: Some(timeline),
            ..Default::default()
        };
        let before = std::time::SystemTime::now();
        merge_agent_view(&mut record, &agent);
        // The first RUNNING is stamped with the controller's instant.
        let stamped = record.start_timeline.and_then(|t| t.controller_running);
        let stamped = stamped.as_ref().map(hutch_core::convert::system_time);
        assert!(stamped.is_some_and(|at| at >= before), "{stamped:?}");
        let kept = v1::StartTimeline {
            controller_running: record.start_timeline.and_then(|t| t.controller_running),
            ..timeline
        };
        assert_eq!(record.start_timeline, Some(kept));
        // A later view without one (an older agent) keeps it, and so does the same
        // RUNNING again (reconciliation): the instant is the first one's.
        merge_agent_view(&mut record, &v1::Container::default());
        assert_eq!(record.start_timeline, Some(kept));
        merge_agent_view(&mut record, &agent);
        assert_eq!(record.start_timeline, Some(kept));
        // A record RUNNING before (an upgrade, a controller restart) gets no instant: it
        // would not be when it became RUNNING.
        let mut running_before = v1::Container {
            state: S::Running as i32,
            ..Default::default()
        };
        merge_agent_view(&mut running_before, &agent);
        assert_eq!(running_before.start_timeline, Some(timeline));
        // Events carry it too: a short run's EXITED may be applied after its run's answer.
        let mut other = v1::Container::default();
        merge_agent_event(
            &mut other,
            &v1::Event {
                state: S::Exited as i32,
                start_timeline: Some(timeline),
                ..Default::default()
            },
        );
        assert_eq!(other.start_timeline, Some(timeline));
        reset_for_new_run(&mut record);
        assert_eq!(record.start_timeline, None);
    }
}
