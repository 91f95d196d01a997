//! What a service needs next, from its declaration and its replicas as they are: how many
//! replicas to start, which to retire, whether a rolling update must pause. Pure: the
//! reconciler gathers the replicas' records and carries the plan out.
//!
//! A replica is *live* until it is retired (its record marked as stopped on purpose), and
//! *available* once it has run (and, with a health check, been healthy) for the strategy's
//! `min_ready`. Replicas of the current template are *updated*; the others are *old*.
//! Without old replicas the count is simply kept. With old ones a rolling update is under
//! way: new replicas start while the live total stays within `replicas + max_surge`, and old
//! ones go while the available ones stay at least `replicas - max_unavailable`. An updated
//! replica that fails on its own (exits, is OOM-killed, cannot start) or is not available
//! within the progress deadline pauses the update: nothing more is started or retired until
//! a new template or a rollback.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// What the planner knows of one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// The container's name.
    pub name: String,
    /// The template revision it runs (its `hutch.service.revision` label).
    pub revision: u64,
    /// Marked as stopped on purpose: on its way out.
    pub retiring: bool,
    /// Since when it has been up (RUNNING, and healthy where it has a check); `None`: not up.
    pub up_since: Option<SystemTime>,
    /// Why it ended by a failure of its own (not a lost node or a drain), if it did so in
    /// its current run or before a restart.
    pub failed: Option<String>,
    /// When its record was made.
    pub created_at: SystemTime,
    /// The node it is placed on (empty while PENDING).
    pub node: String,
}

/// How replicas are replaced, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategy {
    /// Replicas that may be unavailable during an update.
    pub max_unavailable: u32,
    /// Replicas started beyond the count during an update.
    pub max_surge: u32,
    /// How long a replica must be up to be available.
    pub min_ready: Duration,
    /// How long a new replica may take to become available before the update pauses.
    pub progress_deadline: Duration,
}

/// What the service declares, as the planner needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// How many replicas should run.
    pub replicas: u32,
    /// The current template's revision.
    pub revision: u64,
    /// How to replace them.
    pub strategy: Strategy,
    /// The rolling update is paused already.
    pub paused: bool,
}

/// The counts a service's status shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Live replicas.
    pub replicas: u32,
    /// Live replicas of the current template.
    pub updated: u32,
    /// Available live replicas.
    pub available: u32,
    /// Every live replica has the current template, is available, and there are as many
    /// as declared.
    pub converged: bool,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New replicas of the current template to start.
    pub create: u32,
    /// Replicas to retire, by name.
    pub retire: Vec<String>,
    /// Pause the rolling update, for this reason.
    pub pause: Option<String>,
    /// The counts before the plan is carried out.
    pub counts: Counts,
}

/// The plan for `desired` with `replicas` as they are at `now`.
pub fn plan(desired: &Desired, replicas: &[Replica], now: SystemTime) -> Plan {
    let min_ready = desired.strategy.min_ready;
    let available = |r: &Replica| {
        r.up_since
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() >= min_ready)
    };
    let live: Vec<&Replica> = replicas.iter().filter(|r| !r.retiring).collect();
    let (updated, old): (Vec<&Replica>, Vec<&Replica>) =
        live.iter().partition(|r| r.revision == desired.revision);
    let mut plan = Plan {
        counts: Counts {
            replicas: count(live.len()),
            updated: count(updated.len()),
            available: count(live.iter().filter(|r| available(r)).count()),
            converged: false,
        },
        ..Plan::default()
    };
    let n = desired.replicas;
    plan.counts.converged =
        old.is_empty() && plan.counts.updated == n && plan.counts.available == n;

    if old.is_empty() {
        // Steady: keep the count.
        let have = count(updated.len());
        if have < n {
            plan.create = n - have;
        } else if have > n {
            plan.retire = retire_order(&updated, &available)
                .into_iter()
                .take((have - n) as usize)
                .collect();
        }
        return plan;
    }

    if !desired.paused {
        plan.pause = gate_failure(desired, &updated, &available, now);
    }
    if desired.paused || plan.pause.is_some() {
        // Held: nothing new starts and no old one goes, but a lower count is honoured.
        let live_count = count(live.len());
        if live_count > n {
            plan.retire = retire_order(&live, &available)
                .into_iter()
                .take((live_count - n) as usize)
                .collect();
        }
        return plan;
    }

    // Rolling: old replicas that are not available cost no availability; they go first.
    let mut total = count(live.len());
    let mut available_now = plan.counts.available;
    let min_available = n.saturating_sub(desired.strategy.max_unavailable);
    let (old_up, old_down): (Vec<&Replica>, Vec<&Replica>) = old.iter().partition(|r| available(r));
    for r in old_down {
        plan.retire.push(r.name.clone());
        total -= 1;
    }
    for r in retire_order(&old_up, &available) {
        if available_now <= min_available {
            break;
        }
        plan.retire.push(r);
        available_now -= 1;
        total -= 1;
    }
    // Too many updated ones (the count went down meanwhile): the extra go too.
    let have_updated = count(updated.len());
    if have_updated > n {
        let extra = (have_updated - n) as usize;
        for r in retire_order(&updated, &available).into_iter().take(extra) {
            plan.retire.push(r);
            total -= 1;
        }
    }
    let room = n
        .saturating_add(desired.strategy.max_surge)
        .saturating_sub(total);
    plan.create = room.min(n.saturating_sub(have_updated));
    plan
}

/// Why the rolling update must pause: an updated replica failed, or is late.
fn gate_failure(
    desired: &Desired,
    updated: &[&Replica],
    available: &impl Fn(&Replica) -> bool,
    now: SystemTime,
) -> Option<String> {
    if let Some(r) = updated.iter().find(|r| r.failed.is_some()) {
        return Some(format!(
            "rolling update to revision {} paused: replica {} failed ({}); apply a fixed template or roll back",
            desired.revision,
            r.name,
            r.failed.as_deref().unwrap_or("")
        ));
    }
    let deadline = desired.strategy.progress_deadline;
    updated
        .iter()
        .find(|r| !available(r) && now.duration_since(r.created_at).unwrap_or_default() > deadline)
        .map(|r| {
            format!(
                "rolling update to revision {} paused: replica {} was not available within {}{}; apply a fixed template or roll back",
                desired.revision,
                r.name,
                humantime::format_duration(deadline),
                if r.node.is_empty() { " (not placed on any node)" } else { "" }
            )
        })
}

/// Names in the order they should go: not available first, then from the node holding
/// the most of them, newest first.
fn retire_order(replicas: &[&Replica], available: &impl Fn(&Replica) -> bool) -> Vec<String> {
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for r in replicas {
        *per_node.entry(r.node.as_str()).or_default() += 1;
    }
    let mut order: Vec<&&Replica> = replicas.iter().collect();
    order.sort_by_key(|r| {
        (
            available(r),
            std::cmp::Reverse(per_node.get(r.node.as_str()).copied().unwrap_or(0)),
            std::cmp::Reverse(r.created_at),
            r.name.clone(),
        )
    });
    order.into_iter().map(|r| r.name.clone()).collect()
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn strategy(max_unavailable: u32, max_surge: u32) -> Strategy {
        Strategy {
            max_unavailable,
            max_surge,
            min_ready: Duration::from_secs(1),
            progress_deadline: Duration::from_secs(60),
        }
    }

    fn desired(replicas: u32, revision: u64, s: Strategy) -> Desired {
        Desired {
            replicas,
            revision,
            strategy: s,
            paused: false,
        }
    }

    /// A replica up since t=0 on `node`, created at t=0.
    fn up(name: &str, revision: u64, node: &str) -> Replica {
        Replica {
            name: name.into(),
            revision,
            retiring: false,
            up_since: Some(at(0)),
            failed: None,
            created_at: at(0),
            node: node.into(),
        }
    }

    fn starting(name: &str, revision: u64, created: u64) -> Replica {
        Replica {
            up_since: None,
            created_at: at(created),
            ..up(name, revision, "n1")
        }
    }

    #[test]
    fn steady_state_keeps_the_count() {
        let d = desired(3, 1, strategy(0, 1));
        let p = plan(&d, &[], at(10));
        assert_eq!((p.create, p.retire.len()), (3, 0));
        assert!(!p.counts.converged);

        let three = [up("a", 1, "n1"), up("b", 1, "n2"), up("c", 1, "n3")];
        let p = plan(&d, &three, at(10));
        assert_eq!(
            p,
            Plan {
                counts: Counts {
                    replicas: 3,
                    updated: 3,
                    available: 3,
                    converged: true
                },
                ..Plan::default()
            }
        );

        // Retired ones do not count: one more starts.
        let mut one_going = three.clone();
        one_going[0].retiring = true;
        assert_eq!(plan(&d, &one_going, at(10)).create, 1);
    }

    #[test]
    fn scaling_down_takes_unavailable_then_crowded_then_newest() {
        let d = desired(2, 1, strategy(0, 1));
        let mut newest = up("d", 1, "n1");
        newest.created_at = at(5);
        let replicas = [
            up("a", 1, "n1"),
            newest,
            up("b", 1, "n2"),
            starting("e", 1, 1),
            up("c", 1, "n3"),
        ];
        let p = plan(&d, &replicas, at(10));
        assert_eq!(p.create, 0);
        assert_eq!(p.retire, vec!["e", "d", "a"]);
    }

    #[test]
    fn surge_first_update_never_drops_below_the_count() {
        // max_unavailable 0, max_surge 1: one new, then an old one goes once it is up.
        let d = desired(3, 2, strategy(0, 1));
        let old = vec![up("a", 1, "n1"), up("b", 1, "n2"), up("c", 1, "n3")];
        let p = plan(&d, &old, at(10));
        assert_eq!((p.create, p.retire.clone()), (1, vec![]));

        let mut with_new = old.clone();
        with_new.push(starting("x", 2, 9));
        let p = plan(&d, &with_new, at(10));
        assert_eq!((p.create, p.retire.len(), p.pause.clone()), (0, 0, None));

        // Up, but not for min_ready yet.
        with_new[3].up_since = Some(at(10));
        assert_eq!(plan(&d, &with_new, at(10)).retire.len(), 0);
        // Up long enough: one old goes and the next new one starts.
        let p = plan(&d, &with_new, at(12));
        assert_eq!(p.retire.len(), 1);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn unavailable_first_update_keeps_count_minus_one() {
        let d = desired(3, 2, strategy(1, 0));
        let old = vec![up("a", 1, "n1"), up("b", 1, "n2"), up("c", 1, "n3")];
        let p = plan(&d, &old, at(10));
        assert_eq!(p.retire.len(), 1);
        assert_eq!(p.create, 1, "the retired one is replaced in the same step");

        // Next step: two old up, one new starting: nothing more goes.
        let step = vec![up("b", 1, "n2"), up("c", 1, "n3"), starting("x", 2, 9)];
        let p = plan(&d, &step, at(10));
        assert_eq!((p.create, p.retire.len()), (0, 0));
    }

    #[test]
    fn old_replicas_that_are_down_go_at_once() {
        let d = desired(2, 2, strategy(0, 1));
        let replicas = vec![up("a", 1, "n1"), starting("b", 1, 0), starting("x", 2, 9)];
        let p = plan(&d, &replicas, at(10));
        assert_eq!(p.retire, vec!["b"]);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn a_failing_new_replica_pauses_and_nothing_moves() {
        let d = desired(3, 2, strategy(1, 0));
        let mut bad = starting("x", 2, 9);
        bad.failed = Some("exited with code 1".into());
        let replicas = vec![up("b", 1, "n2"), up("c", 1, "n3"), bad];
        let p = plan(&d, &replicas, at(10));
        let why = p.pause.clone().expect("paused");
        assert!(
            why.contains("replica x failed (exited with code 1)"),
            "{why}"
        );
        assert_eq!((p.create, p.retire.len()), (0, 0));

        // Once paused, it stays so; a lower count is still honoured.
        let paused = Desired { paused: true, ..d };
        let p = plan(&paused, &replicas, at(10));
        assert_eq!((p.create, p.retire.len(), p.pause), (0, 0, None));
        let fewer = Desired {
            replicas: 2,
            ..paused
        };
        assert_eq!(plan(&fewer, &replicas, at(10)).retire, vec!["x"]);
    }

    #[test]
    fn a_late_new_replica_pauses_after_the_deadline() {
        let d = desired(2, 2, strategy(0, 1));
        let replicas = vec![up("a", 1, "n1"), up("b", 1, "n2"), starting("x", 2, 0)];
        assert_eq!(plan(&d, &replicas, at(59)).pause, None);
        let why = plan(&d, &replicas, at(61)).pause.expect("paused");
        assert!(why.contains("not available within 1m"), "{why}");
    }

    #[test]
    fn rollback_is_a_rolling_update_to_the_old_revision() {
        // After a rollback the old replicas are current again; the failed new one is old.
        let d = desired(3, 1, strategy(1, 0));
        let mut bad = starting("x", 2, 9);
        bad.failed = Some("exited with code 1".into());
        let replicas = vec![up("b", 1, "n2"), up("c", 1, "n3"), bad];
        let p = plan(&d, &replicas, at(10));
        assert_eq!(p.pause, None);
        assert_eq!(p.retire, vec!["x"]);
        assert_eq!(p.create, 1);
    }

    #[test]
    fn scaling_down_during_an_update_keeps_the_bounds() {
        let d = desired(1, 2, strategy(0, 1));
        let replicas = vec![up("a", 1, "n1"), up("b", 1, "n2"), up("c", 1, "n3")];
        let p = plan(&d, &replicas, at(10));
        // Two old go (availability 3 -> 1 = the count), then one new fits the surge.
        assert_eq!(p.retire.len(), 2);
        assert_eq!(p.create, 1);
    }
}
