//! The supervisor zygote: one `hutch-supervisor zygote` process per agent, started once,
//! that forks a container's supervisor on request instead of the agent executing
//! `hutch-supervisor run` per container. A fork of this small, single-threaded process
//! costs a fraction of an `exec` (the dynamic loader, the C library's start-up and the
//! page faults of a fresh program: about 1.4 ms of a container's start here).
//!
//! The agent owns one end of a `SOCK_SEQPACKET` pair; the zygote reads the other as its
//! stdin. Each request is one message: the container's state directory, with two
//! descriptors, the pipe the supervisor reports on (its stdout) and the supervisor's
//! diagnostics log (its stderr) — the very stdio `hutch-supervisor run DIR` gets. The
//! zygote forks (straight into the supervisors' cgroup on cgroup v2, as `run` does); the
//! child puts the two descriptors in place and goes on exactly as `run`'s supervisor. The
//! zygote answers nothing: the agent reads the outcome from the report pipe, which closes
//! without a report if the fork failed (the reason is in the diagnostics log).
//!
//! The zygote's children are reaped by the kernel (`SIGCHLD` ignored here, restored in
//! the child), so a supervisor's exit leaves nothing behind; a supervisor outlives the
//! zygote, which exits when the agent's end closes (the agent stopped or died).

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::MsgFlags;

use crate::fsutil::unix_micros_now;
use crate::supervisor::{fork_supervisor, read_config, supervise, Born};
use crate::sys;

/// The argument that starts `hutch-supervisor` as a zygote.
pub const ZYGOTE_MODE: &str = "zygote";
/// The argument that starts `hutch-supervisor` as one container's supervisor.
pub const RUN_MODE: &str = "run";
/// Longest request: a state directory's path.
const MAX_REQUEST: usize = 4096;

/// One start request, as the zygote received it.
pub struct StartRequest {
    /// The container's state directory.
    pub dir: PathBuf,
    /// Where the supervisor reports the start (becomes its stdout).
    pub report: OwnedFd,
    /// The supervisor's diagnostics log (becomes its stderr).
    pub log: OwnedFd,
}

/// Asks the zygote on `channel` to start the supervisor of the container in `dir`, without
/// blocking: `EAGAIN` when its queue is full, `EPIPE` (or `ECONNRESET`) when it is gone.
pub fn request_start(
    channel: BorrowedFd<'_>,
    dir: &Path,
    report: BorrowedFd<'_>,
    log: BorrowedFd<'_>,
) -> Result<(), Errno> {
    let path = dir.as_os_str().as_bytes();
    if path.is_empty() || path.len() > MAX_REQUEST {
        return Err(Errno::ENAMETOOLONG);
    }
    sys::send_with_fds(
        channel,
        path,
        &[report.as_raw_fd(), log.as_raw_fd()],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )
}

/// Why a message on the channel is no request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The channel failed.
    #[error("reading the channel: {0}")]
    Channel(Errno),
    /// A message that is not a request (dropped; the zygote goes on).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// Reads the next request from `channel`; `None` once the agent's end has closed.
pub fn next_request(channel: BorrowedFd<'_>) -> Result<Option<StartRequest>, RequestError> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let (len, fds) = loop {
        match sys::recv_with_fds::<2>(channel, &mut buf) {
            Ok(Some(message)) => break message,
            Ok(None) => return Ok(None),
            Err(Errno::EINTR) => continue,
            Err(Errno::EMSGSIZE) => return Err(RequestError::Malformed("too long")),
            Err(e) => return Err(RequestError::Channel(e)),
        }
    };
    let mut fds = fds.into_iter();
    let (Some(report), Some(log), None) = (fds.next(), fds.next(), fds.next()) else {
        return Err(RequestError::Malformed("two descriptors expected"));
    };
    let bytes = buf.get(..len).unwrap_or_default();
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(RequestError::Malformed("no state directory"));
    }
    Ok(Some(StartRequest {
        dir: PathBuf::from(std::ffi::OsStr::from_bytes(bytes)),
        report,
        log,
    }))
}

/// Entry point of `hutch-supervisor zygote`: serves start requests on stdin until the agent
/// closes its end. Returns the process exit code.
pub fn main_zygote() -> i32 {
    if let Err(e) = sys::reap_children_automatically(true) {
        eprintln!("hutch-supervisor zygote: ignoring SIGCHLD: {e}");
        return 1;
    }
    let stdin = std::io::stdin();
    let channel = stdin.as_fd();
    loop {
        match next_request(channel) {
            Ok(Some(request)) => start(request),
            Ok(None) => return 0,
            Err(RequestError::Malformed(why)) => {
                eprintln!("hutch-supervisor zygote: dropped a malformed request: {why}")
            }
            Err(e) => {
                eprintln!("hutch-supervisor zygote: {e}");
                return 1;
            }
        }
    }
}

/// Forks the supervisor `request` asks for; the child never returns.
fn start(request: StartRequest) {
    let began_us = unix_micros_now();
    let fail = |log: OwnedFd, message: String| {
        let _ = writeln!(std::fs::File::from(log), "{message}");
    };
    let cfg = match read_config(&request.dir) {
        Ok(cfg) => cfg,
        Err(message) => return fail(request.log, message),
    };
    // SAFETY: the zygote is single-threaded: it starts no thread, it reads its channel.
    match unsafe { fork_supervisor(&cfg) } {
        Ok(Born::Parent) => {}
        Ok(Born::Supervisor { in_cgroup, note }) => {
            let code = match become_run(request) {
                Ok(named) => {
                    let unnamed = named
                        .err()
                        .map(|e| format!("setting the command line (ps shows the zygote's): {e}"));
                    supervise(cfg, began_us, in_cgroup, note.into_iter().chain(unnamed));
                    0
                }
                Err(e) => {
                    eprintln!("hutch-supervisor: setting up stdio from the zygote: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        Err(e) => fail(request.log, format!("fork failed: {e}")),
    }
}

/// In a forked child: the process state of `hutch-supervisor run DIR`, stdin from
/// `/dev/null`, stdout the report pipe, stderr the log, no zygote channel, `SIGCHLD` at its
/// default, and its command line (which tools find a container's supervisor by); an error
/// setting the command line alone is returned inside.
fn become_run(request: StartRequest) -> nix::Result<nix::Result<()>> {
    sys::reap_children_automatically(false)?;
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // The channel is the zygote's stdin: replacing it closes the channel in this process.
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&request.report)?;
    nix::unistd::dup2_stderr(&request.log)?;
    let program = std::env::args_os().next().unwrap_or_default();
    Ok(sys::set_command_line(&[
        program.as_bytes(),
        RUN_MODE.as_bytes(),
        request.dir.as_os_str().as_bytes(),
    ]))
}
