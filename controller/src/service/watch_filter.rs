//! Which changes a watch wants (`WatchContainersRequest`'s filters: containers, nodes,
//! states, a time), checked for every change before it is sent. Pure.

use std::collections::HashSet;
use std::time::SystemTime;

use hutch_core::convert::system_time;
use hutch_proto::v1;
use tonic::Status;

/// A watch's filters; empty sets let everything through.
#[derive(Debug, Default)]
pub struct WatchFilter {
    containers: HashSet<String>,
    nodes: HashSet<String>,
    states: HashSet<i32>,
    since: Option<SystemTime>,
}

impl WatchFilter {
    /// The filters of `req`; INVALID_ARGUMENT for a state that is not one.
    pub fn of(req: &v1::WatchContainersRequest) -> Result<Self, Status> {
        for (i, s) in req.states.iter().enumerate() {
            let known = v1::ContainerState::try_from(*s)
                .is_ok_and(|s| s != v1::ContainerState::Unspecified);
            if !known {
                return Err(Status::invalid_argument(format!(
                    "states[{i}]: {s} is not a container state (PENDING, SCHEDULED, PREPARING, RUNNING, EXITED, OOM_KILLED, FAILED, LOST)"
                )));
            }
        }
        Ok(WatchFilter {
            containers: req.containers.iter().cloned().collect(),
            nodes: req.nodes.iter().cloned().collect(),
            states: req.states.iter().copied().collect(),
            since: req.since_time.as_ref().map(system_time),
        })
    }

    /// Whether `e` passes every filter.
    pub fn wants(&self, e: &v1::WatchEvent) -> bool {
        let Some(c) = &e.container else {
            return false;
        };
        (self.containers.is_empty() || self.containers.contains(&c.name))
            && (self.nodes.is_empty() || self.nodes.contains(&c.node))
            && (self.states.is_empty() || self.states.contains(&c.state))
            && self
                .since
                .is_none_or(|since| e.time.as_ref().is_some_and(|t| system_time(t) >= since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hutch_core::convert::timestamp;
    use std::time::Duration;

    fn event(name: &str, node: &str, state: v1::ContainerState, at: SystemTime) -> v1::WatchEvent {
        v1::WatchEvent {
            time: Some(timestamp(at)),
            container: Some(v1::Container {
                name: name.into(),
                node: node.into(),
                state: state as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_filter_narrows() {
        let now = SystemTime::now();
        let e = event("web", "n1", v1::ContainerState::Running, now);
        assert!(WatchFilter::default().wants(&e));
        let f = |req: v1::WatchContainersRequest| WatchFilter::of(&req).expect("valid");
        assert!(f(v1::WatchContainersRequest {
            containers: vec!["web".into()],
            ..Default::default()
        })
        .wants(&e));
        assert!(!f(v1::WatchContainersRequest {
            containers: vec!["db".into()],
            ..Default::default()
        })
        .wants(&e));
        assert!(!f(v1::WatchContainersRequest {
            nodes: vec!["n2".into()],
            ..Default::default()
        })
        .wants(&e));
        assert!(f(v1::WatchContainersRequest {
            states: vec![
                v1::ContainerState::Running as i32,
                v1::ContainerState::Exited as i32
            ],
            ..Default::default()
        })
        .wants(&e));
        let later = f(v1::WatchContainersRequest {
            since_time: Some(timestamp(now + Duration::from_secs(1))),
            ..Default::default()
        });
        assert!(!later.wants(&e));
        assert!(later.wants(&event(
            "web",
            "n1",
            v1::ContainerState::Exited,
            now + Duration::from_secs(2)
        )));
        assert!(WatchFilter::of(&v1::WatchContainersRequest {
            states: vec![0],
            ..Default::default()
        })
        .is_err());
        assert!(WatchFilter::of(&v1::WatchContainersRequest {
            states: vec![99],
            ..Default::default()
        })
        .is_err());
    }
}
