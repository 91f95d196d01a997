//! The agent's own system calls: pidfds, the handles by which it watches and signals the
//! supervisors it started without racing pid reuse, and their registration with Tokio. The
//! single-threaded programs' system calls are `hutch_supervisor::sys`.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

pub use hutch_supervisor::sys::{process_start_ticks, set_window_size};

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
