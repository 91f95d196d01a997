//! Every raw system call of the runtime that `nix` does not wrap safely, each in one small,
//! commented place. The rest of the crate calls these wrappers.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Opens a pidfd for `pid` (Linux 5.3+): a handle that stays bound to that one process even
/// if its pid is reused, becomes readable when it exits, and can be signalled safely.
pub fn pidfd_open(pid: u32) -> Result<OwnedFd, Errno> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| Errno::EINVAL)?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = RawFd::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process behind `pidfd` (Linux 5.1+).
pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd, a signal number, a null siginfo (meaning "as kill(2)") and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Starts `child` in a new process with `flags` (namespaces) on a fresh stack, as `clone(2)`.
/// Only the single-threaded supervisor calls this, so the child's copy of the address space
/// has no lock held by another thread; the child runs `child` and exits with its result.
pub fn clone_process(
    child: Box<dyn FnMut() -> isize + '_>,
    flags: CloneFlags,
) -> Result<Pid, Errno> {
    const STACK_SIZE: usize = 1024 * 1024;
    let mut stack = vec![0u8; STACK_SIZE];
    // SAFETY: the callback runs in a separate process (no CLONE_VM), on `stack`, which lives
    // until clone returns in the parent; SIGCHLD makes the child waitable like a fork.
    unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }
}

/// Start time of process `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`);
/// with the pid it identifies one process for good, even after pid reuse.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Pure part of [`process_start_ticks`]; the command name in field 2 may contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Makes this process a child subreaper: orphans of its descendants are re-parented to it
/// instead of to the host's init, so the supervisor reaps everything its container leaves.
pub fn set_child_subreaper() -> Result<(), Errno> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag; no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    Errno::result(rc).map(drop)
}

/// Makes the kernel send SIGKILL to this process when its parent dies.
pub fn set_parent_death_signal_kill() -> Result<(), Errno> {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    Errno::result(rc).map(drop)
}

/// Restores default signal handling before `exec`: an empty signal mask and default
/// dispositions for the signals Rust's runtime or the supervisor changed (SIGPIPE is ignored
/// by Rust programs, and an ignored signal stays ignored across `exec`).
pub fn reset_signals_for_exec() -> Result<(), Errno> {
    use nix::sys::signal::{
        sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
    };
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in [
        Signal::SIGPIPE,
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        unsafe { sigaction(sig, &default) }?;
    }
    Ok(())
}

/// Which side of a [`fork_single_threaded`] this is.
pub enum Forked {
    /// The parent, with the child's pid.
    Parent(Pid),
    /// The child.
    Child,
}

/// `fork(2)` for the supervisor and the exec helper, which are single-threaded programs:
/// no other thread can hold a lock the child would need.
pub fn fork_single_threaded() -> Result<Forked, Errno> {
    // SAFETY: only called by single-threaded programs (no Tokio, no threads started), so the
    // child's copy of memory has no lock held by a thread that does not exist in it.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Registers a pidfd with Tokio's reactor, so that `readable().await` waits for the process
/// to exit without a thread or a poll loop.
pub fn async_pidfd(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    async_fd(fd, tokio::io::Interest::READABLE)
}

/// Registers `fd` with Tokio's reactor for `interest`.
pub fn async_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is a valid open fd that it alone closes, and `as_raw_fd` always
    // returns that same fd, for as long as the AsyncFd owns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(std::io::Error::from)
}

/// Sets the `lo` interface of this process's network namespace up, as Docker and containerd
/// do for a new network namespace (the kernel creates it down), so 127.0.0.1 works inside.
pub fn bring_loopback_up() -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req` into `req`; the
    // pointer is valid for the duration of the call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the union member written by SIOCGIFFLAGS is ifru_flags.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, valid for the duration of the call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// Sets the window size of terminal `fd` (`TIOCSWINSZ`); its foreground process group gets
/// SIGWINCH.
pub fn set_window_size(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` through the pointer, which points to a live
    // local for the duration of the call; `fd` is a valid open descriptor.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    Errno::result(r).map(drop)
}

/// Makes terminal `fd` the controlling terminal of this process, which must be a session
/// leader without one (`TIOCSCTTY`).
pub fn set_controlling_terminal(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal it from another session)
    // and no pointer; an invalid `fd` is reported as an error.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_of_tricky_comm() {
        let stat =
            "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 200";
        assert_eq!(parse_start_ticks(stat), Some(123456));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn own_start_ticks_are_stable() {
        let me = std::process::id();
        assert!(process_start_ticks(me).is_some());
        assert_eq!(process_start_ticks(me), process_start_ticks(me));
    }
}
