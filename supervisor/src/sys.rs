//! Every raw system call of the single-threaded programs that `nix` does not wrap safely,
//! each in one small, commented place; the rest of the crate calls these wrappers. The two
//! that start processes, [`clone_process`] and [`fork_single_threaded`], are `unsafe fn`s:
//! they are sound only in a single-threaded process, which their callers promise.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{OwnedFd, RawFd};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::mman::{mmap_anonymous, mprotect, munmap, MapFlags, ProtFlags};
use nix::unistd::{sysconf, Pid, SysconfVar};

/// Bytes of stack a cloned child gets (the container's init before it execs).
const CHILD_STACK_BYTES: usize = 1024 * 1024;

/// A child's stack: an anonymous mapping whose lowest page is `PROT_NONE`, so a stack
/// overflow in the child faults at once instead of writing over the memory below it.
struct GuardedStack {
    base: NonNull<c_void>,
    len: usize,
    guard: usize,
}

impl GuardedStack {
    fn new(usable: usize) -> Result<Self, Errno> {
        let guard = sysconf(SysconfVar::PAGE_SIZE)?
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        let len = usable + guard;
        let length = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        // SAFETY: a new private anonymous mapping at an address the kernel picks; it overlaps
        // nothing that exists, and only this value refers to it.
        let base = unsafe {
            mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK,
            )
        }?;
        let stack = GuardedStack { base, len, guard };
        // SAFETY: the first page of the mapping just made; nothing points into it yet.
        unsafe { mprotect(base, guard, ProtFlags::PROT_NONE) }?;
        Ok(stack)
    }

    /// The usable bytes, above the guard page.
    fn usable(&mut self) -> &mut [u8] {
        // SAFETY: `guard..len` lies inside the mapping, which is readable and writable there
        // and lives as long as `self`; the `&mut self` borrow makes this the only reference.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().cast::<u8>().add(self.guard),
                self.len - self.guard,
            )
        }
    }
}

impl Drop for GuardedStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no slice of it outlives `self`.
        let _ = unsafe { munmap(self.base, self.len) };
    }
}

/// Starts `child` in a new process with `flags` (namespaces) on a fresh stack with a guard
/// page, as `clone(2)`; the child runs `child` and exits with its result. SIGCHLD makes it
/// waitable like a forked child.
///
/// # Safety
///
/// The calling process must be single-threaded (no Tokio runtime, no thread started): the
/// child gets a copy of the caller's memory, and a lock another thread held at that moment
/// (the allocator's, stdio's) would stay locked in the child for ever. `child` must not
/// expect to return to the caller's stack frames: it runs in the child on its own stack.
pub unsafe fn clone_process(
    child: Box<dyn FnMut() -> isize + '_>,
    flags: CloneFlags,
) -> Result<Pid, Errno> {
    let mut stack = GuardedStack::new(CHILD_STACK_BYTES)?;
    // SAFETY: no CLONE_VM, so the child runs in its own copy of memory on its copy of
    // `stack`; the caller guarantees the single-threadedness that makes that copy sound.
    // The parent's mapping lives until clone has returned.
    unsafe { nix::sched::clone(child, stack.usable(), flags, Some(libc::SIGCHLD)) }
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
    stat_field(stat, 22)
}

/// Whether the calling process has a single thread (field 20 of `/proc/self/stat`);
/// `false` when that cannot be read.
pub fn is_single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| stat_field(&stat, 20))
        == Some(1)
}

/// Field `number` (counted from 1, as proc(5) does) of a `/proc/PID/stat` line, from the
/// third on; the command name in field 2 may contain spaces and parentheses, so fields are
/// counted from its last `)`.
fn stat_field(stat: &str, number: usize) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm
        .split_whitespace()
        .nth(number.checked_sub(3)?)?
        .parse()
        .ok()
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

/// Marks every file descriptor from `first` up close-on-exec, so that none the process
/// inherited or opened (the agent's, a launcher's pipe, a host file a shell left open) reaches
/// the program it execs, while the descriptors still needed until `exec` (the failure report
/// pipe) stay usable. `close_range(CLOSE_RANGE_CLOEXEC)` (Linux 5.11); on older kernels,
/// each descriptor listed in `/proc/self/fd`.
pub fn close_on_exec_from(first: std::os::fd::RawFd) -> Result<(), Errno> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let first = first as libc::c_uint;
    // SAFETY: close_range takes two descriptor numbers and flags; with CLOSE_RANGE_CLOEXEC it
    // only sets a flag on open descriptors and touches no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    match Errno::result(rc) {
        Ok(_) => Ok(()),
        // Older kernels, and an outer seccomp profile that does not know the call.
        Err(Errno::ENOSYS | Errno::EINVAL | Errno::EPERM) => {
            use nix::fcntl::{fcntl, FcntlArg, FdFlag};
            let listed: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&fd: &libc::c_int| fd as libc::c_uint >= first)
                .collect();
            for fd in listed {
                // SAFETY: only sets the close-on-exec flag of a descriptor number; a number
                // closed since the listing (the listing's own) answers EBADF, ignored.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                match fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
                    Ok(_) | Err(Errno::EBADF) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `clone3(2)`'s arguments, version 2 (with `cgroup`, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` of `clone3(2)`.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// [`fork_single_threaded`] with `flags` (namespaces) and straight into the cgroup v2
/// directory `cgroup`, through `clone3(2)`: the child is born in that cgroup, where moving
/// it there afterwards (its pid written to `cgroup.procs`) would take the kernel's global
/// threadgroup lock, whose first use after an idle spell waits for an RCU grace period
/// (milliseconds). On an error (`ENOSYS` or `E2BIG` before Linux 5.7, `EPERM` under a
/// seccomp filter that refuses clone3) callers fork and move the child instead.
///
/// # Safety
///
/// As for [`fork_single_threaded`]: the calling process must be single-threaded. The child
/// continues on a copy of the caller's stack, as after `fork`. Unlike glibc's `fork`, the
/// raw system call leaves glibc's record of the thread id at the parent's in the child:
/// glibc 2.34 and later use `gettid` where it matters (`raise`), Rust's locks are futexes
/// of their own, and hutch's binaries use no pthread mutex that records an owner; glibc
/// before 2.25 also cached the pid (then `getpid` in the child would be wrong).
pub unsafe fn fork_into_cgroup(
    flags: CloneFlags,
    cgroup: std::os::fd::BorrowedFd<'_>,
) -> Result<Forked, Errno> {
    use std::os::fd::AsRawFd;
    let mut args = CloneArgs {
        // Through u32: the flags are a C int, and bit 31 must not spread into the high half.
        flags: flags.bits() as u32 as u64 | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM and without a stack is fork(2) with more options: the
    // child gets a copy of this process's memory and returns here with 0. `args` is valid
    // for the call and its size is passed with it; the caller guarantees the
    // single-threadedness that makes the copy sound.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(rc)? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as libc::pid_t))),
    }
}

/// Which side of a [`fork_single_threaded`] this is.
pub enum Forked {
    /// The parent, with the child's pid.
    Parent(Pid),
    /// The child.
    Child,
}

/// `fork(2)` for the supervisor and the exec helper.
///
/// # Safety
///
/// The calling process must be single-threaded (no Tokio runtime, no thread started): the
/// child gets a copy of the caller's memory, and a lock another thread held at that moment
/// (the allocator's, stdio's) would stay locked in the child for ever.
pub unsafe fn fork_single_threaded() -> Result<Forked, Errno> {
    // SAFETY: the caller guarantees that this process is single-threaded.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
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

/// A pseudo-terminal of the devpts instance behind this process's `/dev/ptmx` (in a
/// container, after it entered its root: the container's own, so the terminal is
/// `/dev/pts/0` inside and `tty`, `ps` and `ttyname` know it): (master, slave), both
/// close-on-exec, the slave of `rows` x `cols`.
pub fn open_own_terminal(rows: u16, cols: u16) -> Result<(OwnedFd, OwnedFd), Errno> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    // No grantpt: a devpts instance needs none, and glibc's (before 2.33) looks the tty
    // group up through NSS, which would load the container image's own libraries here,
    // before the init drops anything.
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    set_window_size(std::os::fd::AsFd::as_fd(&slave), rows, cols)?;
    Ok((master.into(), slave))
}

/// A connected pair of local sockets to hand a descriptor over (the terminal's master, from
/// the container's init to its supervisor), both close-on-exec.
pub fn fd_channel() -> Result<(OwnedFd, OwnedFd), Errno> {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Sends descriptor `fd` over `channel` (SCM_RIGHTS).
pub fn send_fd(channel: std::os::fd::BorrowedFd<'_>, fd: RawFd) -> Result<(), Errno> {
    send_with_fds(channel, b"t", &[fd], nix::sys::socket::MsgFlags::empty())
}

/// Receives one descriptor sent with [`send_fd`]; `None` when the other end closed first.
pub fn recv_fd(channel: std::os::fd::BorrowedFd<'_>) -> Result<Option<OwnedFd>, Errno> {
    let mut byte = [0u8; 1];
    Ok(recv_with_fds::<1>(channel, &mut byte)?.and_then(|(_, fds)| fds.into_iter().next()))
}

/// Sends one message, `bytes` with descriptors `fds` (SCM_RIGHTS), over a `SOCK_SEQPACKET`
/// or datagram `channel`.
pub fn send_with_fds(
    channel: std::os::fd::BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[RawFd],
    flags: nix::sys::socket::MsgFlags,
) -> Result<(), Errno> {
    use nix::sys::socket::{sendmsg, ControlMessage, UnixAddr};
    use std::os::fd::AsRawFd;
    let rights = [ControlMessage::ScmRights(fds)];
    sendmsg::<UnixAddr>(
        channel.as_raw_fd(),
        &[std::io::IoSlice::new(bytes)],
        &rights,
        flags,
        None,
    )
    .map(drop)
}

/// Receives one message sent with [`send_with_fds`] into `buf`, with up to `N` descriptors
/// (close-on-exec): its length and the descriptors, or `None` once the other end has
/// closed. A message longer than `buf`, or with more than `N` descriptors, is `EMSGSIZE`
/// (its descriptors closed).
pub fn recv_with_fds<const N: usize>(
    channel: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
) -> Result<Option<(usize, Vec<OwnedFd>)>, Errno> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; N]);
    let msg = recvmsg::<UnixAddr>(
        channel.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these descriptors in this process for this
            // message; nothing else refers to them, so they are ours to own and close.
            fds.extend(
                received
                    .iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) }),
            );
        }
    }
    if msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
    {
        return Err(Errno::EMSGSIZE);
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((msg.bytes, fds)))
}

/// The memory map fields of `prctl(PR_SET_MM, PR_SET_MM_MAP)` (`struct prctl_mm_map`).
#[repr(C)]
struct MemoryMapLayout {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

/// Makes `/proc/self/cmdline` (what `ps` shows) read `args`, as if this process had been
/// started with them: a process forked from the zygote would otherwise show the zygote's.
/// The new arguments live until the process ends; every other field of the memory map is
/// passed back as `/proc/self/stat` shows it (`PR_SET_MM_MAP` needs no capability, unlike
/// setting the arguments' bounds one by one).
pub fn set_command_line(args: &[&[u8]]) -> Result<(), Errno> {
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|_| Errno::EIO)?;
    let field = |number| stat_field(&stat, number).ok_or(Errno::EIO);
    let mut area = Vec::new();
    for arg in args {
        area.extend_from_slice(arg);
        area.push(0);
    }
    let area: &'static [u8] = Box::leak(area.into_boxed_slice());
    // SAFETY: brk(0) changes nothing and returns the current end of the heap.
    let brk = unsafe { libc::syscall(libc::SYS_brk, 0) };
    let layout = MemoryMapLayout {
        start_code: field(26)?,
        end_code: field(27)?,
        start_data: field(45)?,
        end_data: field(46)?,
        start_brk: field(47)?,
        brk: u64::try_from(brk).map_err(|_| Errno::EIO)?,
        start_stack: field(28)?,
        arg_start: area.as_ptr() as u64,
        arg_end: area.as_ptr() as u64 + area.len() as u64,
        env_start: field(50)?,
        env_end: field(51)?,
        auxv: 0,
        auxv_size: 0,
        exe_fd: u32::MAX,
    };
    // SAFETY: the kernel reads `layout` (of the size passed) during the call and records
    // the addresses, after checking they lie in this process's mappings; `area` is leaked,
    // so the arguments stay valid; auxv and the executable are left as they are.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP,
            &layout as *const MemoryMapLayout,
            std::mem::size_of::<MemoryMapLayout>(),
            0,
        )
    };
    Errno::result(rc).map(drop)
}

/// Lets the kernel reap this process's children as they exit (`SIGCHLD` ignored), or, with
/// `false`, makes them wait to be reaped again (the default).
pub fn reap_children_automatically(on: bool) -> Result<(), Errno> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let handler = if on {
        SigHandler::SigIgn
    } else {
        SigHandler::SigDfl
    };
    let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    // SAFETY: ignoring a signal or restoring its default runs no handler code.
    unsafe { sigaction(Signal::SIGCHLD, &action) }.map(drop)
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
        // Field 20, the thread count, is the 1 before the start time's 0.
        assert_eq!(stat_field(stat, 20), Some(1));
        assert_eq!(stat_field(stat, 2), None);
    }

    #[test]
    fn a_test_thread_is_not_alone() {
        // The test harness runs this on a thread of its own, beside the main one.
        assert!(!is_single_threaded());
    }

    #[test]
    fn own_start_ticks_are_stable() {
        let me = std::process::id();
        assert!(process_start_ticks(me).is_some());
        assert_eq!(process_start_ticks(me), process_start_ticks(me));
    }
}
