//! `--explain`: where the time of one start through the controller goes, hop by hop. Each
//! start of `start-latency` gives twelve instants on this host's clock (the client's, the
//! controller's record, the node's start timeline up to the init's exit, the watch); the breakdown prints, for each hop, the median time since the previous one and
//! since the create was sent.

use std::io::Write;
use std::time::{Duration, SystemTime};

use hutch_core::convert::system_time;

use crate::report::{ms, percentile};
use crate::scenarios::TimedStart;

/// The hops, in the order they happen, each with the hop it is measured from (the
/// previous one, except where the container's end runs beside the watch's RUNNING).
const HOPS: [(&str, usize); 12] = [
    ("client sent CreateContainer", 0),
    ("controller recorded it", 0),
    ("agent took RunContainer", 1),
    ("supervisor process began", 2),
    ("supervisor joined its cgroup", 3),
    ("init cloned (overlay mounted, namespaces made)", 4),
    ("init released (in its cgroup, network ready)", 5),
    ("init exec'd the command", 6),
    ("controller took the node's RUNNING", 7),
    ("watch saw RUNNING (durable)", 8),
    ("init exited (since its exec)", 7),
    // The end is reported once its record is written; the clean-up runs meanwhile.
    ("watch saw EXITED (since the init exited)", 10),
];
/// The instants of many starts.
#[derive(Default)]
pub struct Breakdown {
    /// Per start, each hop's instant (None when the start did not record it).
    starts: Vec<[Option<SystemTime>; HOPS.len()]>,
}

impl Breakdown {
    /// Adds one start.
    pub fn add(&mut self, s: &TimedStart) {
        let timeline = s.last.start_timeline.unwrap_or_default();
        self.starts.push([
            Some(s.sent),
            s.created.created_at.as_ref().map(system_time),
            timeline.agent_received.as_ref().map(system_time),
            timeline.supervisor_started.as_ref().map(system_time),
            timeline.cgroup_joined.as_ref().map(system_time),
            timeline.init_cloned.as_ref().map(system_time),
            timeline.init_released.as_ref().map(system_time),
            timeline.init_exec.as_ref().map(system_time),
            timeline.controller_running.as_ref().map(system_time),
            Some(s.sent + s.running),
            timeline.init_exited.as_ref().map(system_time),
            Some(s.sent + s.exited),
        ]);
    }

    /// Prints the table: per hop, the median since the previous hop and since the create.
    pub fn print(&self, out: &mut impl Write) {
        let _ = writeln!(
            out,
            "\nwhere a start's time goes (start-latency, medians of {} starts, ms):",
            self.starts.len()
        );
        let _ = writeln!(
            out,
            "  {:<50} {:>10} {:>12}",
            "hop", "since prev", "since sent"
        );
        for (i, (hop, from)) in HOPS.iter().enumerate() {
            let since = |from: usize| -> Vec<Duration> {
                self.starts
                    .iter()
                    .filter_map(|s| s[i]?.duration_since(s[from]?).ok())
                    .collect()
            };
            let (step, total) = if i == 0 {
                (Vec::new(), Vec::new())
            } else {
                (since(*from), since(0))
            };
            let cell = |v: &[Duration]| match v.is_empty() {
                true if i == 0 => "0".to_string(),
                true => "-".to_string(),
                false => format!("{:.2}", ms(percentile(v, 0.5))),
            };
            let _ = writeln!(out, "  {hop:<50} {:>10} {:>12}", cell(&step), cell(&total));
        }
        let with_timeline = self.starts.iter().filter(|s| s[2].is_some()).count();
        let _ = writeln!(
            out,
            "  ({with_timeline} of {} starts carried their node's timeline; the controller's and the node's instants are their own clocks: one host here)",
            self.starts.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hutch_core::convert::timestamp_us;
    use hutch_proto::v1;
    use std::time::UNIX_EPOCH;

    #[test]
    fn hops_are_measured_from_the_previous_one_and_from_the_send() {
        let base = 1_800_000_000_000_000u64;
        let sent = UNIX_EPOCH + Duration::from_micros(base);
        let start = TimedStart {
            running: Duration::from_micros(6_000),
            exited: Duration::from_micros(9_000),
            sent,
            created: v1::Container {
                created_at: Some(timestamp_us(base + 500)),
                ..Default::default()
            },
            last: v1::Container {
                start_timeline: Some(v1::StartTimeline {
                    agent_received: Some(timestamp_us(base + 1_500)),
                    supervisor_started: Some(timestamp_us(base + 2_000)),
                    cgroup_joined: Some(timestamp_us(base + 3_000)),
                    init_cloned: Some(timestamp_us(base + 3_500)),
                    init_released: Some(timestamp_us(base + 4_000)),
                    init_exec: Some(timestamp_us(base + 5_000)),
                    controller_running: Some(timestamp_us(base + 5_400)),
                    init_exited: Some(timestamp_us(base + 5_200)),
                    cleaned_up: Some(timestamp_us(base + 8_000)),
                }),
                ..Default::default()
            },
        };
        let mut b = Breakdown::default();
        b.add(&start);
        let mut out = Vec::new();
        b.print(&mut out);
        let text = String::from_utf8(out).unwrap_or_default();
        let line = |hop: &str| {
            text.lines()
                .find(|l| l.contains(hop))
                .map(|l| l.split_whitespace().rev().take(2).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        assert_eq!(line("controller recorded"), ["0.50", "0.50"], "{text}");
        assert_eq!(line("agent took"), ["1.50", "1.00"], "{text}");
        assert_eq!(line("init exec'd"), ["5.00", "1.00"], "{text}");
        assert_eq!(line("node's RUNNING"), ["5.40", "0.40"], "{text}");
        assert_eq!(line("saw RUNNING"), ["6.00", "0.60"], "{text}");
        // The end is measured from the exec, beside the RUNNING.
        assert_eq!(line("init exited"), ["5.20", "0.20"], "{text}");
        assert_eq!(line("EXITED"), ["9.00", "3.80"], "{text}");
    }

    #[test]
    fn a_start_without_a_timeline_shows_dashes() {
        let mut b = Breakdown::default();
        b.add(&TimedStart {
            running: Duration::from_millis(1),
            exited: Duration::from_millis(2),
            sent: SystemTime::now(),
            created: v1::Container::default(),
            last: v1::Container::default(),
        });
        let mut out = Vec::new();
        b.print(&mut out);
        let text = String::from_utf8(out).unwrap_or_default();
        assert!(
            text.lines()
                .any(|l| l.contains("agent took") && l.trim_end().ends_with('-')),
            "{text}"
        );
    }
}
