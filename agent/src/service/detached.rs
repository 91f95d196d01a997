//! Work an RPC carries on with when its caller goes away. tonic drops a call's future when
//! the client disconnects or its deadline passes; a start, stop or removal cut off there
//! would leave a container running that nothing reports or watches (no RUNNING, no exit,
//! no health checks), or half removed and never reported. Such work runs in a task of its
//! own, holding the request's slot of the daemon's limits, and shutdown waits for it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hutch_server::limits::RequestSlot;
use tokio::sync::watch;
use tonic::Status;

/// The work going on in tasks of its own.
#[derive(Default)]
pub struct Detached {
    running: Arc<watch::Sender<usize>>,
}

/// Counts one piece of work out when it ends, also by a panic.
struct Ends(Arc<watch::Sender<usize>>);

impl Drop for Ends {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Detached {
    /// Runs `work` to its end whether or not its caller still waits, holding `slot` until
    /// then; the caller gets its result if it waits.
    pub async fn run<T: Send + 'static>(
        &self,
        slot: Option<RequestSlot>,
        work: impl Future<Output = Result<T, Status>> + Send + 'static,
    ) -> Result<T, Status> {
        self.running.send_modify(|n| *n += 1);
        let ends = Ends(self.running.clone());
        let task = tokio::spawn(async move {
            let _held = (slot, ends);
            work.await
        });
        task.await.map_err(|e| {
            tracing::error!("a call's task failed: {e}");
            Status::internal("the agent failed while doing this call; its log says why")
        })?
    }

    /// Runs `work` to its end without a caller waiting for it; a shutdown waits for it as
    /// for [`Detached::run`]'s.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.running.send_modify(|n| *n += 1);
        let ends = Ends(self.running.clone());
        tokio::spawn(async move {
            let _held = ends;
            work.await
        });
    }

    /// Waits up to `limit` for the work going on to end; false when some is still going.
    pub async fn wait(&self, limit: Duration) -> bool {
        let mut running = self.running.subscribe();
        tokio::time::timeout(limit, running.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// How many are going on.
    pub fn running(&self) -> usize {
        *self.running.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_goes_on_after_its_caller_left_and_shutdown_waits_for_it() {
        let detached = Arc::new(Detached::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let d = detached.clone();
        let caller = tokio::spawn(async move {
            d.run(None, async move {
                let _ = rx.await;
                Ok(())
            })
            .await
        });
        while detached.running() == 0 {
            tokio::task::yield_now().await;
        }
        caller.abort(); // The caller goes away.
        let _ = caller.await;
        assert_eq!(detached.running(), 1, "the work goes on without its caller");
        assert!(!detached.wait(Duration::from_millis(20)).await);
        let _ = tx.send(());
        assert!(detached.wait(Duration::from_secs(5)).await, "it ended");
    }

    #[tokio::test]
    async fn spawned_work_is_waited_for_by_shutdown() {
        let detached = Detached::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        detached.spawn(async move {
            let _ = rx.await;
        });
        assert_eq!(detached.running(), 1);
        assert!(!detached.wait(Duration::from_millis(20)).await);
        let _ = tx.send(());
        assert!(detached.wait(Duration::from_secs(5)).await, "it ended");
    }

    #[tokio::test]
    async fn a_panic_is_an_internal_error_that_says_nothing_of_the_panic() {
        let detached = Detached::default();
        let out: Result<(), Status> = detached.run(None, async { panic!("secret detail") }).await;
        let status = out.expect_err("an error");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("secret"), "{status:?}");
        assert_eq!(detached.running(), 0);
    }
}
