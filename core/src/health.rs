//! Health checks, as Docker has them (`--health-cmd`, `--health-interval`,
//! `--health-timeout`, `--health-retries`, `--health-start-period`): the check a spec asks
//! for, its bounds, and the state machine its results drive. Pure: the agent runs the
//! command and the clock.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Between checks, and a check's time limit, when the spec says 0 (Docker's defaults).
pub const DEFAULT_INTERVAL_MS: u32 = 30_000;
/// See [`DEFAULT_INTERVAL_MS`].
pub const DEFAULT_TIMEOUT_MS: u32 = 30_000;
/// Failed checks in a row that make a container unhealthy when the spec says 0.
pub const DEFAULT_RETRIES: u32 = 3;
/// The shortest interval and timeout.
pub const MIN_PERIOD_MS: u32 = 100;
/// The longest interval, timeout and start period: a day.
pub const MAX_PERIOD_MS: u32 = 86_400_000;
/// The most retries.
pub const MAX_RETRIES: u32 = 1000;
/// The most output kept of a check.
pub const MAX_OUTPUT_BYTES: usize = 4096;

/// A spec's health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// argv of the check.
    pub command: Vec<String>,
    /// Between checks (0: the default).
    #[serde(default)]
    pub interval_ms: u32,
    /// A check's time limit (0: the default).
    #[serde(default)]
    pub timeout_ms: u32,
    /// Failures in a row that make it unhealthy (0: the default).
    #[serde(default)]
    pub retries: u32,
    /// Failures right after the start that do not count while it is starting.
    #[serde(default)]
    pub start_period_ms: u32,
}

/// Why a health check was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("health: {0}")]
pub struct HealthError(pub String);

impl HealthCheck {
    /// The interval in force.
    pub fn interval_ms(&self) -> u32 {
        if self.interval_ms == 0 {
            DEFAULT_INTERVAL_MS
        } else {
            self.interval_ms
        }
    }

    /// The time limit in force.
    pub fn timeout_ms(&self) -> u32 {
        if self.timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            self.timeout_ms
        }
    }

    /// The retries in force.
    pub fn retries(&self) -> u32 {
        if self.retries == 0 {
            DEFAULT_RETRIES
        } else {
            self.retries
        }
    }

    /// Checks the command and the bounds.
    pub fn validate(&self) -> Result<(), HealthError> {
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(HealthError(
                "command is empty: give the check to run, e.g. [\"/bin/sh\", \"-c\", \"curl -f localhost\"]".into(),
            ));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(HealthError("command contains a NUL byte".into()));
        }
        for (name, value) in [
            ("interval_ms", self.interval_ms),
            ("timeout_ms", self.timeout_ms),
        ] {
            if value != 0 && !(MIN_PERIOD_MS..=MAX_PERIOD_MS).contains(&value) {
                return Err(HealthError(format!(
                    "{name}: {value} is not between {MIN_PERIOD_MS} (100 ms) and {MAX_PERIOD_MS} (a day); 0 means 30 s"
                )));
            }
        }
        if self.start_period_ms > MAX_PERIOD_MS {
            return Err(HealthError(format!(
                "start_period_ms: {} is more than a day",
                self.start_period_ms
            )));
        }
        if self.retries > MAX_RETRIES {
            return Err(HealthError(format!(
                "retries: {} is more than {MAX_RETRIES}",
                self.retries
            )));
        }
        Ok(())
    }
}

/// Where a container's health stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// No check has passed yet.
    #[default]
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed.
    Unhealthy,
}

impl HealthState {
    /// `starting`, `healthy`, `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

/// What the checks of one container said so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HealthStatus {
    /// Where it stands.
    pub state: HealthState,
    /// Failed checks in a row.
    pub failing_streak: u32,
    /// The last check's output, cut to [`MAX_OUTPUT_BYTES`].
    pub last_output: String,
    /// The last check's exit code; -1 when it timed out or could not run.
    pub last_exit_code: i32,
    /// When the last check ended, in ms since the epoch (0: none yet).
    pub last_check_ms: u64,
}

impl HealthStatus {
    /// Records one check's result (`exit_code` 0 passed) that ended at `now_ms`, for a
    /// container started at `started_ms`; returns whether the state changed.
    pub fn record(
        &mut self,
        check: &HealthCheck,
        exit_code: i32,
        output: &str,
        now_ms: u64,
        started_ms: u64,
    ) -> bool {
        let before = self.state;
        self.last_exit_code = exit_code;
        self.last_check_ms = now_ms;
        self.last_output = cut(output, MAX_OUTPUT_BYTES);
        if exit_code == 0 {
            self.failing_streak = 0;
            self.state = HealthState::Healthy;
        } else {
            let in_start_period = self.state == HealthState::Starting
                && now_ms.saturating_sub(started_ms) < u64::from(check.start_period_ms);
            if !in_start_period {
                self.failing_streak += 1;
                if self.failing_streak >= check.retries() {
                    self.state = HealthState::Unhealthy;
                }
            }
        }
        self.state != before
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period_ms: u32) -> HealthCheck {
        HealthCheck {
            command: vec!["true".into()],
            interval_ms: 1000,
            timeout_ms: 1000,
            retries,
            start_period_ms,
        }
    }

    #[test]
    fn passes_and_failures_in_a_row() {
        let c = check(2, 0);
        let mut h = HealthStatus::default();
        assert!(h.record(&c, 0, "ok", 10, 0));
        assert_eq!(h.state, HealthState::Healthy);
        assert!(!h.record(&c, 1, "no", 20, 0), "one failure of two allowed");
        assert_eq!(h.failing_streak, 1);
        assert!(h.record(&c, 1, "no", 30, 0));
        assert_eq!(h.state, HealthState::Unhealthy);
        assert!(h.record(&c, 0, "ok", 40, 0), "a pass heals");
        assert_eq!((h.state, h.failing_streak), (HealthState::Healthy, 0));
    }

    #[test]
    fn the_start_period_forgives_while_starting() {
        let c = check(1, 5000);
        let mut h = HealthStatus::default();
        assert!(!h.record(&c, 1, "", 1000, 0));
        assert_eq!((h.state, h.failing_streak), (HealthState::Starting, 0));
        assert!(h.record(&c, 1, "", 6000, 0), "after the period it counts");
        assert_eq!(h.state, HealthState::Unhealthy);
    }

    #[test]
    fn bounds_and_output() {
        assert!(check(3, 0).validate().is_ok());
        let mut c = check(3, 0);
        c.command.clear();
        assert!(c.validate().is_err());
        let mut c = check(3, 0);
        c.interval_ms = 5;
        assert!(c.validate().is_err());
        let mut c = check(5000, 0);
        c.interval_ms = 0;
        assert!(c.validate().is_err());
        let mut h = HealthStatus::default();
        h.record(&check(3, 0), 0, &"é".repeat(4000), 1, 0);
        assert!(h.last_output.len() <= MAX_OUTPUT_BYTES);
        assert_eq!(check(0, 0).retries(), DEFAULT_RETRIES);
    }
}
