//! The agent's side of the supervisor zygote (see [`hutch_supervisor::zygote`]): one
//! `hutch-supervisor zygote` process, started on the first container start and again
//! whenever it is found gone, that forks each container's supervisor on request. A request
//! carries the same stdio an executed `hutch-supervisor run DIR` gets, so the caller reads
//! the report the same way whichever way the supervisor was started.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use tokio::io::unix::AsyncFd;

use super::lock_whole;
use hutch_supervisor::zygote::{request_start, ZYGOTE_MODE};

/// How long a request may wait for room in a zygote's socket (its send buffer holds a few
/// hundred requests: a socketpair has no queue limit of its own) before that zygote is
/// taken for stuck, killed, and the supervisor started without it.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Why the zygote could not take a request; the caller starts the supervisor by `exec`.
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    /// No zygote could be started.
    #[error("cannot start {bin} {ZYGOTE_MODE}: {source}")]
    Spawn {
        /// The program.
        bin: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The request could not be sent.
    #[error("sending a start request to the zygote: {0}")]
    Send(Errno),
    /// The zygote's queue stayed full.
    #[error("the zygote took no request for {QUEUE_WAIT:?}; it was killed")]
    Stuck,
}

/// A running zygote: the agent's end of its channel and the process.
struct Zygote {
    channel: AsyncFd<OwnedFd>,
    process: Mutex<tokio::process::Child>,
}

/// Starts supervisors through a zygote, starting one when there is none.
pub struct ZygoteClient {
    bin: PathBuf,
    current: Mutex<Option<Arc<Zygote>>>,
}

impl ZygoteClient {
    /// A client of zygotes run from `bin` (`hutch-supervisor`); none runs until the first
    /// request.
    pub fn new(bin: PathBuf) -> Self {
        ZygoteClient {
            bin,
            current: Mutex::new(None),
        }
    }

    /// Asks a zygote to fork the supervisor of the container in `dir`, with `report` as its
    /// stdout and `log` as its stderr. A zygote found gone is replaced once.
    pub async fn start(
        &self,
        dir: &Path,
        report: &OwnedFd,
        log: &OwnedFd,
    ) -> Result<(), ZygoteError> {
        let mut replaced = false;
        loop {
            let zygote = self.current()?;
            match zygote.send(dir, report, log).await {
                Ok(()) => return Ok(()),
                Err(ZygoteError::Send(Errno::EPIPE | Errno::ECONNRESET | Errno::ECONNREFUSED))
                    if !replaced =>
                {
                    tracing::warn!("the supervisor zygote is gone; starting another");
                    self.forget(&zygote);
                    replaced = true;
                }
                Err(e @ ZygoteError::Stuck) => {
                    self.forget(&zygote);
                    return Err(e);
                }
                // This request's own trouble: the zygote stays for the next.
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops the running zygote, if any: its channel closes, and it exits once it has
    /// forked what it was asked for. The next request starts another.
    pub fn stop(&self) {
        lock_whole(&self.current).take();
    }

    /// Kills the running zygote, taken for stuck: what it was asked for and has not forked
    /// is dropped (those starts' report pipes end); the next request starts another.
    pub fn stop_stuck(&self) {
        if let Some(zygote) = lock_whole(&self.current).take() {
            let _ = lock_whole(&zygote.process).start_kill();
        }
    }

    /// The running zygote, started if there is none.
    fn current(&self) -> Result<Arc<Zygote>, ZygoteError> {
        let mut current = lock_whole(&self.current);
        if let Some(zygote) = current.as_ref() {
            return Ok(zygote.clone());
        }
        let zygote = Arc::new(self.spawn()?);
        *current = Some(zygote.clone());
        Ok(zygote)
    }

    /// Drops `zygote` (if it is still the current one) and kills it: its channel closes with
    /// the last request under way, and a zygote that still reads exits then anyway.
    fn forget(&self, zygote: &Arc<Zygote>) {
        let mut current = lock_whole(&self.current);
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, zygote)) {
            *current = None;
        }
        let _ = lock_whole(&zygote.process).start_kill();
    }

    fn spawn(&self) -> Result<Zygote, ZygoteError> {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let spawn_err = |source: std::io::Error| ZygoteError::Spawn {
            bin: self.bin.clone(),
            source,
        };
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| spawn_err(e.into()))?;
        // The zygote blocks on its end; only ours is non-blocking (a flag of the file, not
        // of the pair).
        clear_nonblocking(&theirs).map_err(|e| spawn_err(e.into()))?;
        let process = tokio::process::Command::new(&self.bin)
            .arg(ZYGOTE_MODE)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(spawn_err)?;
        tracing::debug!(pid = ?process.id(), "supervisor zygote started");
        Ok(Zygote {
            channel: super::sys::async_fd(ours, tokio::io::Interest::WRITABLE)
                .map_err(spawn_err)?,
            process: Mutex::new(process),
        })
    }
}

impl Zygote {
    /// Sends one request, waiting (at most [`QUEUE_WAIT`]) while the queue is full.
    async fn send(&self, dir: &Path, report: &OwnedFd, log: &OwnedFd) -> Result<(), ZygoteError> {
        let sending = async {
            loop {
                let mut ready = self.channel.writable().await.map_err(|e| {
                    ZygoteError::Send(Errno::from_raw(e.raw_os_error().unwrap_or(0)))
                })?;
                match request_start(
                    self.channel.get_ref().as_fd(),
                    dir,
                    report.as_fd(),
                    log.as_fd(),
                ) {
                    Err(Errno::EAGAIN) => ready.clear_ready(),
                    Err(Errno::EINTR) => {}
                    done => return done.map_err(ZygoteError::Send),
                }
            }
        };
        tokio::time::timeout(QUEUE_WAIT, sending)
            .await
            .unwrap_or(Err(ZygoteError::Stuck))
    }
}

fn clear_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).map(drop)
}
