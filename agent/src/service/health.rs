//! Health checks: for each running container whose spec has one, a task runs its command
//! inside it (an exec) every interval, records the result (`health.json` in its state
//! directory, so an agent restart and `GetContainer` see it) and reports a change of state
//! as an event, which the controller follows (and restarts an unhealthy container whose
//! policy allows it). The task ends with the container.

use std::sync::Arc;
use std::time::Duration;

use hutch_core::health::HealthStatus;

use super::reporter::Reporter;
use crate::fsutil::unix_millis_now;
use crate::runtime::state::Status;
use crate::runtime::Runtime;

/// Starts the checks of container `id`, if its spec has one.
pub fn spawn(reporter: Arc<Reporter>, runtime: Arc<Runtime>, id: String) {
    let Ok(info) = runtime.get(&id) else { return };
    let Some(check) = info.spec.health.clone() else {
        return;
    };
    tokio::spawn(async move {
        let mut status: HealthStatus = info.health.unwrap_or_default();
        let started_ms = info.state.started_ms.unwrap_or_else(unix_millis_now);
        loop {
            tokio::time::sleep(Duration::from_millis(u64::from(check.interval_ms()))).await;
            // The same run: an id can be reused by a new container after a removal.
            let running = runtime.state_of(&id).is_ok_and(|s| {
                s.status == Status::Running && s.started_ms == info.state.started_ms
            });
            if !running {
                return;
            }
            let limit = Duration::from_millis(u64::from(check.timeout_ms()));
            let (code, output) = match runtime
                .exec_within(&id, check.command.clone(), Some(limit))
                .await
            {
                Ok(Some(out)) => {
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    (out.exit_code.unwrap_or(-1), text)
                }
                Ok(None) => (-1, format!("the check ran longer than {limit:?}")),
                Err(e) => (-1, format!("the check could not run: {e}")),
            };
            let changed = status.record(&check, code, &output, unix_millis_now(), started_ms);
            if let Err(e) = runtime.set_health(&id, &status) {
                tracing::debug!(container = %id, "health not recorded: {e}");
                return; // Removed meanwhile.
            }
            if changed {
                tracing::info!(container = %id, health = status.state.as_str(), "health changed");
                if let Ok(info) = runtime.get(&id) {
                    reporter.report(&info).await;
                }
            }
        }
    });
}
