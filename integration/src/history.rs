//! A small Jepsen-style check of what clients saw against what the cluster holds.
//!
//! Clients log one JSON line per operation (`ha_client` writes them): creates with their
//! outcome (`ok`: acknowledged; `fail`: refused, so it must not have happened; `unknown`:
//! the answer was lost, so it may or may not have), and the events a resuming watcher
//! received. [`check`] compares them with the final records and lists every violation:
//! an acknowledged create missing or doubled, a refused one present, a record nobody
//! asked for, a container run more than once, a watcher that missed, repeated or
//! reordered a revision.

use std::collections::{BTreeMap, BTreeSet};

/// One line of a client's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A create and what its client was told.
    Create {
        /// The container's name.
        name: String,
        /// `ok`, `fail` or `unknown`.
        outcome: String,
    },
    /// An event a watcher received.
    Event {
        /// Its cluster revision.
        revision: u64,
        /// The container it is about.
        name: String,
        /// CREATED, UPDATED or REMOVED.
        kind: String,
    },
}

impl Op {
    /// Parses one JSON line (`{"op":"create",...}` or `{"op":"event",...}`).
    pub fn parse(line: &str) -> Result<Op, String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        let text = |k: &str| v[k].as_str().map(str::to_string);
        match v["op"].as_str() {
            Some("create") => Ok(Op::Create {
                name: text("name").ok_or_else(|| format!("no name: {line}"))?,
                outcome: text("outcome").ok_or_else(|| format!("no outcome: {line}"))?,
            }),
            Some("event") => Ok(Op::Event {
                revision: v["revision"]
                    .as_u64()
                    .ok_or_else(|| format!("no revision: {line}"))?,
                name: text("name").unwrap_or_default(),
                kind: text("kind").unwrap_or_default(),
            }),
            _ => Err(format!("not an operation: {line}")),
        }
    }
}

/// A record at the end, as far as the check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its name.
    pub name: String,
    /// Runs after the first (a container run twice has more than zero).
    pub restart_count: u32,
}

/// What the check found: the counts, and every violation in words.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Creates acknowledged.
    pub acknowledged: usize,
    /// Creates refused.
    pub refused: usize,
    /// Creates whose answer was lost.
    pub unknown: usize,
    /// Events received by the watchers, all together.
    pub events: usize,
    /// Every violation found.
    pub violations: Vec<String>,
}

/// Checks `creates` (every client's creates), `watchers` (each watcher's events, in the
/// order received) and `records` (the final records whose names start with `prefix`).
pub fn check(creates: &[Op], watchers: &[Vec<Op>], records: &[Record], prefix: &str) -> Verdict {
    let mut v = Verdict::default();
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records.iter().filter(|r| r.name.starts_with(prefix)) {
        *held.entry(r.name.as_str()).or_default() += 1;
        if r.restart_count > 0 {
            v.violations.push(format!(
                "{} ran {} times (restart count {})",
                r.name,
                r.restart_count + 1,
                r.restart_count
            ));
        }
    }
    let mut asked = BTreeSet::new();
    let mut acknowledged = BTreeSet::new();
    for op in creates {
        let Op::Create { name, outcome } = op else {
            continue;
        };
        asked.insert(name.as_str());
        let copies = held.get(name.as_str()).copied().unwrap_or(0);
        match outcome.as_str() {
            "ok" => {
                v.acknowledged += 1;
                acknowledged.insert(name.as_str());
                if copies != 1 {
                    v.violations.push(format!(
                        "{name}: acknowledged, but {copies} records at the end"
                    ));
                }
            }
            "fail" => {
                v.refused += 1;
                if copies != 0 {
                    v.violations
                        .push(format!("{name}: refused, but {copies} records at the end"));
                }
            }
            _ => {
                v.unknown += 1;
                if copies > 1 {
                    v.violations.push(format!(
                        "{name}: answer lost, and {copies} records at the end"
                    ));
                }
            }
        }
    }
    for name in held.keys() {
        if !asked.contains(name) {
            v.violations
                .push(format!("{name}: a record nobody created"));
        }
    }
    for (w, events) in watchers.iter().enumerate() {
        let mut last: Option<u64> = None;
        let mut added = BTreeSet::new();
        for op in events {
            let Op::Event {
                revision,
                name,
                kind,
            } = op
            else {
                continue;
            };
            v.events += 1;
            match last {
                Some(l) if *revision <= l => v.violations.push(format!(
                    "watcher {w}: revision {revision} after {l} (repeated or out of order)"
                )),
                Some(l) if *revision != l + 1 => v.violations.push(format!(
                    "watcher {w}: revisions {} to {} missed",
                    l + 1,
                    revision - 1
                )),
                _ => {}
            }
            last = Some(*revision);
            if kind == "CREATED" && name.starts_with(prefix) && !added.insert(name.clone()) {
                v.violations
                    .push(format!("watcher {w}: {name} created twice"));
            }
        }
        for name in &acknowledged {
            if !added.contains(*name) {
                v.violations.push(format!(
                    "watcher {w}: never saw the acknowledged create of {name}"
                ));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, outcome: &str) -> Op {
        Op::Create {
            name: name.into(),
            outcome: outcome.into(),
        }
    }

    fn event(revision: u64, name: &str, kind: &str) -> Op {
        Op::Event {
            revision,
            name: name.into(),
            kind: kind.into(),
        }
    }

    fn record(name: &str) -> Record {
        Record {
            name: name.into(),
            restart_count: 0,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let creates = [
            create("p-1", "ok"),
            create("p-2", "unknown"),
            create("p-3", "fail"),
        ];
        let watch = vec![
            event(4, "p-1", "CREATED"),
            event(5, "p-1", "UPDATED"),
            event(6, "p-2", "CREATED"),
        ];
        let v = check(&creates, &[watch], &[record("p-1"), record("p-2")], "p-");
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert_eq!(
            (v.acknowledged, v.unknown, v.refused, v.events),
            (1, 1, 1, 3)
        );
    }

    #[test]
    fn every_kind_of_violation_is_named() {
        let creates = [
            create("p-lost", "ok"),
            create("p-twice", "ok"),
            create("p-refused", "fail"),
            create("p-ran-twice", "ok"),
        ];
        let watch = vec![
            event(1, "p-twice", "CREATED"),
            event(3, "p-twice", "CREATED"),
            event(3, "p-refused", "CREATED"),
            event(2, "p-ran-twice", "CREATED"),
        ];
        let records = [
            record("p-twice"),
            record("p-twice"),
            record("p-refused"),
            Record {
                name: "p-ran-twice".into(),
                restart_count: 1,
            },
            record("p-stranger"),
        ];
        let text = check(&creates, &[watch], &records, "p-")
            .violations
            .join("\n");
        for expected in [
            "p-lost: acknowledged, but 0 records",
            "p-twice: acknowledged, but 2 records",
            "p-refused: refused, but 1 records",
            "p-ran-twice ran 2 times",
            "p-stranger: a record nobody created",
            "revisions 2 to 2 missed",
            "revision 3 after 3",
            "revision 2 after 3",
            "p-twice created twice",
            "never saw the acknowledged create of p-lost",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn lines_parse_and_garbage_is_refused() {
        assert_eq!(
            Op::parse(r#"{"op":"create","name":"a","outcome":"ok"}"#),
            Ok(create("a", "ok"))
        );
        assert_eq!(
            Op::parse(r#"{"op":"event","revision":7,"name":"a","kind":"CREATED"}"#),
            Ok(event(7, "a", "CREATED"))
        );
        assert!(Op::parse("{}").is_err());
        assert!(Op::parse("not json").is_err());
    }
}
