//! Group commit: many changes share one flush to disk.
//!
//! A change is *staged* under the state lock: handed to the store, which keeps it in memory
//! ([`crate::store::Store::stage`]), and applied in memory, so the next change placed under
//! the lock sees it. It is made durable by a *sync* that runs outside the lock and writes
//! every change staged before it in one transaction, with one fsync. Whoever needs a change durable (the caller being
//! answered, a reader, a dispatch about to start a container) waits until the sync that
//! covers it is done; the first of them that finds no sync under way runs one for all
//! (leader and followers). A change's watch events are published, and its caller answered,
//! only once it is durable, so nothing is acknowledged that a crash could take back.
//!
//! Staged changes are numbered in the order they were staged (1, 2, ...): a sync of number
//! `n` makes every change up to `n` durable, because the store keeps their order.
//!
//! A change that nothing would share a sync with (fewer than [`GROUP_MIN`] calls that may
//! commit are under way, and nothing staged waits) is written durably at once under the
//! lock, as one write, after any sync under way has ended: as before group commit.
//!
//! A sync that fails leaves changes in memory that may never reach the disk: the cluster
//! then steps down (its term ends, as when an etcd write's outcome is lost), and every
//! waiter gets the error.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

/// Calls that may commit under way (the caller's included; a heartbeat counts, as it
/// may) from which changes are staged for a shared sync, as PostgreSQL waits for company
/// only with `commit_siblings` (5) other transactions open. With fewer, a call waits for a
/// sync under way to end, then writes its change at once: a sync shared by a few changes
/// saves little, and staging a change while a sync is under way makes it wait for that one
/// and its own. Measured with `hutch-bench watch-fanout`, where changes come a few at a
/// time: staging from 2 or 3 calls on made the watchers' delays 25-30% longer (p50 and
/// p99).
pub(crate) const GROUP_MIN: usize = 6;

/// Where the staged changes stand.
#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    /// The number of the last change staged.
    pub staged: u64,
    /// Every change up to this number is durable, and its events are published.
    pub durable: u64,
    /// A sync is under way.
    pub syncing: bool,
    /// A sync failed with this message: what is staged past `durable` may never be durable.
    pub failed: Option<String>,
}

/// The staged and durable change numbers, shared by the cluster's callers.
#[derive(Debug)]
pub(crate) struct GroupSync {
    progress: watch::Sender<Progress>,
    /// Calls that may commit, under way (see [`GroupSync::committing`]).
    committers: AtomicUsize,
}

impl Default for GroupSync {
    fn default() -> Self {
        GroupSync {
            progress: watch::channel(Progress::default()).0,
            committers: AtomicUsize::new(0),
        }
    }
}

/// A call that may commit, counted while it lasts.
pub(crate) struct Committing<'a>(&'a GroupSync);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.committers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl GroupSync {
    /// Counts a call that may commit until the guard is dropped.
    pub fn committing(&self) -> Committing<'_> {
        self.committers.fetch_add(1, Ordering::Relaxed);
        Committing(self)
    }

    /// Fewer than [`GROUP_MIN`] calls that may commit are under way (the caller counted).
    pub fn few(&self) -> bool {
        self.committers.load(Ordering::Relaxed) < GROUP_MIN
    }

    /// True when few calls may commit ([`GroupSync::few`]), no sync is under way and
    /// nothing staged waits for one: a change then goes to disk at once, in one durable
    /// write under the lock, as no other change would share its sync.
    pub fn alone(&self) -> bool {
        let p = self.progress.borrow();
        self.few() && !p.syncing && p.durable >= p.staged
    }

    /// Numbers a change just staged (called under the state lock, so numbers follow the
    /// store's order).
    pub fn staged(&self) -> u64 {
        let mut seq = 0;
        self.progress.send_modify(|p| {
            p.staged += 1;
            seq = p.staged;
        });
        seq
    }

    /// True when a change staged is not yet durable.
    pub fn waiting(&self) -> bool {
        let p = self.progress.borrow();
        p.durable < p.staged
    }

    /// The number of the last change staged.
    pub fn last_staged(&self) -> u64 {
        self.progress.borrow().staged
    }

    /// Takes the lead of a sync when none is under way and something is staged and not yet
    /// durable: returns the number the sync will make durable.
    pub fn claim(&self) -> Option<u64> {
        let mut target = None;
        self.progress.send_if_modified(|p| {
            if p.syncing || p.failed.is_some() || p.durable >= p.staged {
                return false;
            }
            p.syncing = true;
            target = Some(p.staged);
            false
        });
        target
    }

    /// Records that every change up to `seq` is durable (and published); `led`: the caller
    /// claimed the sync that did it.
    pub fn synced(&self, seq: u64, led: bool) {
        self.progress.send_modify(|p| {
            p.durable = p.durable.max(seq);
            if led {
                p.syncing = false;
            }
        });
    }

    /// Records that a sync failed: no later change will be durable.
    pub fn failed(&self, message: String, led: bool) {
        self.progress.send_modify(|p| {
            p.failed.get_or_insert(message);
            if led {
                p.syncing = false;
            }
        });
    }

    /// Waits until no sync is under way.
    pub async fn idle(&self) {
        let mut progress = self.progress.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let _ = progress.wait_for(|p| !p.syncing).await;
    }

    /// Waits until change `seq` is durable, or a sync fails (its message), or no sync is
    /// under way though `seq` is not durable (`Ok(false)`: the caller should lead one).
    pub async fn wait(&self, seq: u64) -> Result<bool, String> {
        let mut progress = self.progress.subscribe();
        let seen = progress
            .wait_for(|p| p.durable >= seq || p.failed.is_some() || !p.syncing)
            .await;
        // The sender lives as long as `self`: `wait_for` cannot fail here.
        let Ok(p) = seen else { return Ok(false) };
        match &p.failed {
            _ if p.durable >= seq => Ok(true),
            Some(message) => Err(message.clone()),
            None => Ok(false),
        }
    }
}

thread_local! {
    /// Inside [`deferring`]: the number of the last change staged on this thread, 0 if none.
    static DEFERRING: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Runs `f`, in which the changes staged on this thread are not synced before they return
/// (the caller waits for them after `f`, without the state lock); returns what `f` returned
/// and the number of the last change it staged.
pub(crate) fn deferring<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
    /// Puts back the outer state (keeping the latest number for an outer `deferring`).
    struct Reset(Option<u64>);
    impl Drop for Reset {
        fn drop(&mut self) {
            DEFERRING.with(|d| {
                let inner = d.get().unwrap_or(0);
                d.set(self.0.map(|outer| outer.max(inner)));
            });
        }
    }
    let outer = DEFERRING.with(|d| d.replace(Some(0)));
    let reset = Reset(outer);
    let value = f();
    let last = DEFERRING.with(|d| d.get()).filter(|&seq| seq > 0);
    drop(reset);
    (value, last)
}

/// True inside [`deferring`]: a change may be staged and synced after `f` returns.
pub(crate) fn may_defer() -> bool {
    DEFERRING.with(|d| d.get().is_some())
}

/// Records that change `seq` was staged inside [`deferring`], to be synced after it.
pub(crate) fn deferred(seq: u64) {
    DEFERRING.with(|d| {
        if d.get().is_some() {
            d.set(Some(seq));
        }
    });
}

/// What a call that committed becomes when its changes could not be made durable.
pub(crate) trait Outcome {
    /// `self`, or the error in its place when the type can carry one.
    fn unless_lost(self, error: super::ClusterError) -> Self;
}

impl<T> Outcome for Result<T, super::ClusterError> {
    fn unless_lost(self, error: super::ClusterError) -> Self {
        self.and(Err(error))
    }
}

/// Outcomes that carry no error: the cluster has stepped down, which its loops and streams
/// see on their own.
macro_rules! outcome_without_error {
    ($($t:ty),*) => {$(
        impl Outcome for $t {
            fn unless_lost(self, _: super::ClusterError) -> Self {
                self
            }
        }
    )*};
}
outcome_without_error!((), bool);

impl<T> Outcome for Option<T> {
    fn unless_lost(self, _: super::ClusterError) -> Self {
        None
    }
}

impl<T> Outcome for Vec<T> {
    fn unless_lost(self, _: super::ClusterError) -> Self {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_at_a_time_covers_everything_staged_before_it() {
        let g = GroupSync::default();
        assert_eq!(g.claim(), None, "nothing staged, nothing to sync");
        assert_eq!(g.staged(), 1);
        assert_eq!(g.staged(), 2);
        assert_eq!(g.claim(), Some(2));
        assert_eq!(g.staged(), 3);
        assert_eq!(g.claim(), None, "a sync is under way");
        g.synced(2, true);
        assert_eq!(g.claim(), Some(3), "what was staged during the sync");
        g.synced(3, true);
        assert_eq!(g.claim(), None);
    }

    #[tokio::test]
    async fn waiters_learn_durable_failed_or_lead() {
        let g = GroupSync::default();
        let one = g.staged();
        assert_eq!(g.wait(one).await, Ok(false), "nobody syncs: lead");
        assert_eq!(g.claim(), Some(one));
        g.synced(one, true);
        assert_eq!(g.wait(one).await, Ok(true));
        let two = g.staged();
        assert_eq!(g.claim(), Some(two));
        g.failed("disk gone".into(), true);
        assert_eq!(g.wait(two).await, Err("disk gone".to_string()));
        assert_eq!(
            g.wait(one).await,
            Ok(true),
            "what was durable stays durable"
        );
        assert_eq!(g.claim(), None, "no sync after a failure");
    }

    #[test]
    fn only_commits_inside_deferring_are_deferred() {
        assert!(!may_defer(), "outside: sync now");
        let ((), last) = deferring(|| {
            assert!(may_defer());
            deferred(4);
            deferred(9);
        });
        assert_eq!(last, Some(9));
        let ((), last) = deferring(|| ());
        assert_eq!(last, None);
        assert!(!may_defer(), "reset after");
        let outcome = std::panic::catch_unwind(|| deferring(|| panic!("inside")));
        assert!(outcome.is_err());
        assert!(!may_defer(), "reset after a panic too");
    }

    #[test]
    fn few_committers_with_nothing_staged_are_alone() {
        let g = GroupSync::default();
        let first = g.committing();
        assert!(g.alone());
        {
            let _others: Vec<_> = (1..GROUP_MIN).map(|_| g.committing()).collect();
            assert!(!g.alone(), "enough calls to share a sync");
        }
        assert!(g.alone());
        let seq = g.staged();
        assert!(!g.alone(), "a staged change waits for a sync: join it");
        g.synced(seq, false);
        assert!(g.alone());
        drop(first);
    }
}
