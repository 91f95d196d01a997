//! The per-container supervisor (containerd's shim, podman's conmon): a small,
//! single-threaded program, started by the agent with `exec`, one per container.
//!
//! It detaches from the agent (double fork + `setsid`, so it survives the agent and is not
//! the agent's child), joins the supervisors' cgroup leaf (so it is never charged to the
//! container), mounts the container's rootfs layer, clones the container's init into its
//! namespaces (see [`crate::init`]), places it in the container's cgroup, writes its uid/gid
//! maps and releases it. It then:
//!
//! - tells the agent the outcome with one JSON line on its stdout (the container's state),
//!   and keeps that pipe open until the exit record is written (its end tells the agent);
//! - copies the container's stdout and stderr into `container.log`, one tagged line each;
//! - reaps the init (and, as child subreaper, every orphan of the container);
//! - writes the exit record (code, signal, OOM kill, memory peak) atomically *first*,
//! - then kills what is left in the cgroup, unmounts everything below the container's
//!   directory, removes the cgroup, and records `cleaned_up`.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{self, Pid};

use crate::attach::{self, AttachPoint};
use crate::cgroup::ContainerCgroup;
use crate::fsutil::{read_json, replace_json, unix_micros_now, unix_millis_now};
use crate::init::{self, InitIo, InitMessage};
use crate::logs::{format_line, LineSplitter, RotatingLog, Stream};
use crate::mounts::unmount_below;
use crate::overlay;
use crate::security::Filters;
use crate::state::{
    ContainerState, Failure, NamespaceReport, StatePaths, Status, SupervisorConfig,
};
use crate::sys;
use hutch_core::spec::{IdMap, Namespace};
use hutch_core::step::Step;

/// End of file on a terminal (Ctrl-D).
const EOT: u8 = 4;

/// Where the container's output comes from.
enum Output {
    /// Two pipes.
    Pipes { stdout: OwnedFd, stderr: OwnedFd },
    /// A terminal's master side, and the socket clients attach to.
    Terminal {
        master: OwnedFd,
        attach: AttachPoint,
    },
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map(drop)
}

/// Longest log record before a line is split into partial records.
const MAX_LOG_LINE: usize = 16 * 1024;
/// How long to wait for the output pipes to close after the container's processes are gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

macro_rules! diag {
    ($($arg:tt)*) => {
        eprintln!("{} {}", humantime::format_rfc3339_millis(SystemTime::now()), format!($($arg)*))
    };
}

/// Entry point of `hutch-supervisor run DIR`. Returns the process exit code.
pub fn main_run(dir: &Path) -> i32 {
    let began_us = unix_micros_now();
    let cfg = match read_config(dir) {
        Ok(c) => c,
        Err(message) => {
            diag!("{message}");
            return 1;
        }
    };
    // Fork and exit at once, so the agent reaps us immediately and the real supervisor is
    // re-parented away from the agent.
    // SAFETY: `hutch-supervisor` is single-threaded: nothing before this point starts a
    // thread.
    match unsafe { fork_supervisor(&cfg) } {
        Ok(Born::Parent) => 0,
        Ok(Born::Supervisor { in_cgroup, note }) => {
            supervise(cfg, began_us, in_cgroup, note);
            0
        }
        Err(e) => {
            diag!("fork failed: {e}");
            1
        }
    }
}

/// Reads the configuration the agent wrote into the state directory `dir`.
pub fn read_config(dir: &Path) -> Result<SupervisorConfig, String> {
    read_json(&StatePaths::config(dir))
        .map_err(|e| format!("cannot read {}: {e}", StatePaths::config(dir).display()))
}

/// Which side of [`fork_supervisor`] this is.
pub enum Born {
    /// The process that forked.
    Parent,
    /// The new supervisor; `in_cgroup`: it was born in the supervisors' cgroup; `note`: why
    /// it was not, where that failed.
    Supervisor {
        /// Born in the supervisors' cgroup (or else it must move itself there).
        in_cgroup: bool,
        /// Why it could not be born there, if it tried.
        note: Option<String>,
    },
}

/// Forks the supervisor of the container configured by `cfg`. On cgroup v2 it is born in
/// the supervisors' cgroup; elsewhere it moves itself there once running.
///
/// # Safety
///
/// As for [`sys::fork_single_threaded`]: the calling process must be single-threaded.
pub unsafe fn fork_supervisor(cfg: &SupervisorConfig) -> nix::Result<Born> {
    // Another agent process may have just removed the idle leaf: recreate it.
    let _ = std::fs::create_dir_all(cfg.supervisors_cgroup.dir());
    let target = cfg.supervisors_cgroup.clone_target().ok().flatten();
    let born_in_cgroup = target.as_ref().map(|fd| {
        // SAFETY: the caller guarantees that this process is single-threaded.
        unsafe { sys::fork_into_cgroup(CloneFlags::empty(), fd.as_fd()) }
    });
    let (forked, in_cgroup, note) = match born_in_cgroup {
        Some(Ok(forked)) => (forked, true, None),
        Some(Err(e)) => (
            // SAFETY: as above.
            unsafe { sys::fork_single_threaded() }?,
            false,
            Some(format!(
                "clone3 into the supervisors' cgroup failed ({e}); forked, then moving"
            )),
        ),
        // SAFETY: as above.
        None => (unsafe { sys::fork_single_threaded() }?, false, None),
    };
    Ok(match forked {
        sys::Forked::Parent(_) => Born::Parent,
        sys::Forked::Child => Born::Supervisor { in_cgroup, note },
    })
}

/// The life of a supervisor once forked (see [`fork_supervisor`]): a session of its own,
/// then the container's start, supervision and clean-up. `began_us`: when the start request
/// was taken, for the timeline; `notes`: diagnostics of its birth.
pub fn supervise(
    cfg: SupervisorConfig,
    began_us: u64,
    in_cgroup: bool,
    notes: impl IntoIterator<Item = String>,
) {
    for note in notes {
        diag!("{note}");
    }
    let _ = unistd::setsid();
    let mut sup = Supervisor::new(cfg, began_us);
    sup.run(in_cgroup);
}

struct Supervisor {
    cfg: SupervisorConfig,
    state: ContainerState,
    cgroup: ContainerCgroup,
    /// The pipe the start was reported on, kept open (close-on-exec: nothing the supervisor
    /// runs inherits it) until the exit record is written: its end tells the agent the
    /// container has ended, before the clean-up.
    agent_pipe: Option<OwnedFd>,
}

struct Pipes {
    stdout: (OwnedFd, OwnedFd),
    stderr: (OwnedFd, OwnedFd),
    report: (OwnedFd, OwnedFd),
    release: (OwnedFd, OwnedFd),
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Failure> {
    unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| Failure::new(Step::Start, format!("creating a pipe: {e}")))
}

impl Supervisor {
    fn new(cfg: SupervisorConfig, began_us: u64) -> Self {
        let me = std::process::id();
        let mut state = read_json(&StatePaths::state(&cfg.dir))
            .unwrap_or_else(|_| ContainerState::created(&cfg.id, unix_millis_now()));
        state.timeline.supervisor_started_us = Some(began_us);
        state.supervisor_pid = Some(me);
        state.supervisor_start_ticks = sys::process_start_ticks(me);
        let cgroup = ContainerCgroup::open(cfg.cgroup.clone());
        Supervisor {
            cfg,
            state,
            cgroup,
            agent_pipe: None,
        }
    }

    fn save(&self) {
        if let Err(e) = replace_json(&StatePaths::state(&self.cfg.dir), &self.state) {
            diag!("cannot write state: {e}");
        }
    }

    /// Tells the agent the outcome of the start, then stops writing to the pipe to it; a
    /// running container's supervisor keeps it open until the exit record is written.
    fn tell_agent(&mut self) {
        if let Ok(mut line) = serde_json::to_vec(&self.state) {
            line.push(b'\n');
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&line);
            let _ = out.flush();
        }
        if !self.state.status.is_final() {
            self.agent_pipe = std::io::stdout().as_fd().try_clone_to_owned().ok();
        }
        // From now on stdout goes to the diagnostics log like stderr.
        let _ = unistd::dup2_stdout(std::io::stderr());
    }

    /// `in_cgroup`: this process was born in the supervisors' cgroup.
    fn run(&mut self, in_cgroup: bool) {
        let started = Instant::now();
        self.save();
        match self.start(in_cgroup) {
            Ok((child, output)) => {
                diag!(
                    "container {} running as pid {child} (start took {:?})",
                    self.cfg.id,
                    started.elapsed()
                );
                self.tell_agent();
                self.supervise(child, output);
            }
            Err(f) => {
                diag!(
                    "container {} failed at '{}': {}",
                    self.cfg.id,
                    f.step,
                    f.message
                );
                self.state.status = Status::Failed;
                self.state.failure = Some(f);
                self.state.finished_ms = Some(unix_millis_now());
                self.save();
                self.cleanup();
                self.tell_agent();
            }
        }
    }

    /// Everything up to the exec of the command. On error nothing of the container runs.
    fn start(&mut self, in_cgroup: bool) -> Result<(Pid, Output), Failure> {
        let cfg = self.cfg.clone();
        if !in_cgroup {
            cfg.supervisors_cgroup.add_this_process().map_err(|e| {
                Failure::new(
                    Step::Cgroup,
                    format!("joining the supervisors' cgroup: {e}"),
                )
            })?;
        }
        self.state.timeline.cgroup_joined_us = Some(unix_micros_now());
        sys::set_child_subreaper()
            .map_err(|e| Failure::new(Step::Start, format!("becoming subreaper: {e}")))?;
        if let Some(bytes) = cfg.spec.disk_limit_bytes {
            overlay::mount_size_limit(&cfg.dir, bytes)
                .map_err(|e| Failure::new(Step::Rootfs, e.to_string()))?;
        }
        overlay::mount_layer(
            &cfg.layer(),
            cfg.spec.read_only_rootfs,
            !cfg.spec.security.privileged,
        )
        .map_err(|e| Failure::new(Step::Rootfs, e.to_string()))?;
        crate::container_mounts::stage(
            &cfg.dir,
            &cfg.layer().merged,
            &cfg.mounts,
            cfg.spec.security.privileged,
        )?;

        let pipes = Pipes {
            stdout: pipe()?,
            stderr: pipe()?,
            report: pipe()?,
            release: pipe()?,
        };
        // On a terminal: the init opens it from the container's own devpts (so it is
        // /dev/pts/0 inside) and sends the master back over a socket, as runc's console
        // socket does; the master and the attach point stay here. Both exist before the
        // command runs, so no output and no client is missed.
        let terminal = if cfg.spec.tty {
            let (rx, tx) = crate::sys::fd_channel()
                .map_err(|e| Failure::new(Step::Terminal, format!("terminal channel: {e}")))?;
            let attach = AttachPoint::bind(&StatePaths::attach(&cfg.dir))
                .map_err(|e| Failure::new(Step::Terminal, format!("attach socket: {e}")))?;
            Some((rx, tx, attach))
        } else {
            None
        };
        let io = InitIo {
            release: pipes.release.0.as_raw_fd(),
            report: pipes.report.1.as_raw_fd(),
            stdout: pipes.stdout.1.as_raw_fd(),
            stderr: pipes.stderr.1.as_raw_fd(),
            console: terminal.as_ref().map(|(_, tx, _)| tx.as_raw_fd()),
        };
        // The init is born in the container's cgroup (v2), or moves itself there (v1, see
        // SelfEntry); where clone3 fails (a kernel before 5.7, a seccomp filter refusing
        // it) it is moved by pid below.
        let cgroup_err = |e: crate::cgroup::CgroupError| Failure::new(Step::Cgroup, e.to_string());
        let entry = self.cgroup.self_entry().map_err(cgroup_err)?;
        let target = self.cgroup.path().clone_target().map_err(cgroup_err)?;
        let host_namespaces = init::own_namespaces();
        let filters = Filters::compile(&cfg.spec.effective_security())
            .map_err(|e| Failure::new(Step::Security, e.to_string()))?;
        let born_in_cgroup = target.as_ref().map(|fd| {
            // SAFETY: the supervisor is single-threaded: it starts no thread, it polls its
            // fds. The child never returns from here: it execs or exits.
            match unsafe { sys::fork_into_cgroup(clone_flags(&cfg), fd.as_fd()) } {
                Ok(sys::Forked::Child) => {
                    // A panic must end here, not unwind through the supervisor's frames
                    // (their destructors would remove the supervisor's files).
                    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        init::run(&cfg, io, None, &filters)
                    }))
                    .unwrap_or(127);
                    // SAFETY: _exit ends the child at once, without running the parent's
                    // exit handlers or destructors on its copy of the memory.
                    unsafe { libc::_exit(code as i32) }
                }
                Ok(sys::Forked::Parent(pid)) => Ok(pid),
                Err(e) => Err(e),
            }
        });
        if let Some(Err(e)) = born_in_cgroup {
            diag!("clone3 into the container's cgroup failed ({e}); cloning, then moving the init");
        }
        let child = match born_in_cgroup {
            Some(Ok(pid)) => Ok(pid),
            // SAFETY: as above.
            _ => unsafe {
                sys::clone_process(
                    Box::new(|| init::run(&cfg, io, entry.as_ref(), &filters)),
                    clone_flags(&cfg),
                )
            },
        }
        .map_err(|e| {
            Failure::new(
                Step::Clone,
                format!("creating the namespaces: {} ({e:?})", e.desc()),
            )
        })?;
        let Pipes {
            stdout,
            stderr,
            report,
            release,
        } = pipes;
        drop((stdout.1, stderr.1, report.1, release.0));
        self.state.timeline.init_cloned_us = Some(unix_micros_now());
        // The init's end goes with the init: a channel read then ends instead of waiting.
        let terminal = terminal.map(|(rx, tx, attach)| {
            drop(tx);
            (rx, attach)
        });

        let placed = match (&entry, &born_in_cgroup) {
            (Some(_), _) | (_, Some(Ok(_))) => Ok(()),
            _ => self
                .cgroup
                .add_process(child.as_raw() as u32)
                .map_err(|e| Failure::new(Step::Cgroup, e.to_string())),
        }
        .and_then(|()| {
            if cfg.spec.has(Namespace::User) {
                write_id_maps(
                    child,
                    &cfg.spec.effective_uid_map(),
                    &cfg.spec.effective_gid_map(),
                )
            } else {
                Ok(())
            }
        });
        let mut reader = std::io::BufReader::new(File::from(report.0));
        let released = placed.and_then(|()| self.connect(child)).and_then(|()| {
            self.state.timeline.init_released_us = Some(unix_micros_now());
            unistd::write(&release.1, &[1])
                .map(drop)
                .map_err(|e| Failure::new(Step::Start, format!("releasing the init: {e}")))
        });
        if let Err(f) = released {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            // An init that failed before its release (entering its cgroup) said why.
            return Err(reported_failure(&mut reader).unwrap_or(f));
        }
        drop(release.1);

        let mut namespaces = None;
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::BufRead::read_line(&mut reader, &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => match serde_json::from_str::<InitMessage>(&line) {
                    Ok(InitMessage::Namespaces(ns)) => namespaces = Some(ns),
                    Ok(InitMessage::Failed(f)) => {
                        let _ = waitpid(child, None);
                        return Err(f);
                    }
                    Err(e) => diag!("unreadable message from init: {e}"),
                },
            }
        }
        let Some(namespaces) = namespaces else {
            let status = waitpid(child, None);
            return Err(Failure::new(
                Step::Start,
                format!("the container's init died during setup ({status:?})"),
            ));
        };
        // Sent before the exec that ended the report: already queued.
        let output = match terminal {
            Some((rx, attach)) => match crate::sys::recv_fd(rx.as_fd()) {
                Ok(Some(master)) => Output::Terminal { master, attach },
                other => {
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    return Err(Failure::new(
                        Step::Terminal,
                        format!("the init sent no terminal ({other:?})"),
                    ));
                }
            },
            None => Output::Pipes {
                stdout: stdout.0,
                stderr: stderr.0,
            },
        };
        self.state.namespaces = namespaces
            .into_iter()
            .map(|(kind, container_inode)| {
                let host_inode = host_namespaces
                    .iter()
                    .find_map(|(k, i)| (*k == kind).then_some(*i))
                    .unwrap_or(0);
                NamespaceReport {
                    kind,
                    container_inode,
                    host_inode,
                    isolated: container_inode != host_inode,
                }
            })
            .collect();
        self.state.status = Status::Running;
        self.state.pid = Some(child.as_raw() as u32);
        self.state.started_ms = Some(unix_millis_now());
        self.state.timeline.init_exec_us = Some(unix_micros_now());
        self.save();
        Ok((child, output))
    }

    /// Copies output to the log (and to attached clients), feeds attached clients' input to
    /// the terminal, and reaps until the container's init has exited.
    fn supervise(&mut self, child: Pid, output: Output) {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None);
        let mut sigfd =
            SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok();
        let mut log = RotatingLog::open(&StatePaths::log(&self.cfg.dir), self.cfg.log_limits).ok();
        let (first, second, mut attach) = match output {
            Output::Pipes { stdout, stderr } => (stdout, Some(stderr), None),
            Output::Terminal { master, attach } => {
                let _ = set_nonblocking(&master);
                (master, None, Some(attach))
            }
        };
        let mut streams = [
            (Some(first), Stream::Stdout, LineSplitter::new(MAX_LOG_LINE)),
            (second, Stream::Stderr, LineSplitter::new(MAX_LOG_LINE)),
        ];
        // Input from attached clients, waiting for room in the terminal.
        let mut to_terminal: Vec<u8> = Vec::new();
        let mut exit: Option<WaitStatus> = None;
        let mut drain_deadline: Option<Instant> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if exit.is_some() && streams.iter().all(|s| s.0.is_none()) {
                break;
            }
            if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                diag!("output pipes still open {DRAIN_TIMEOUT:?} after exit; closing them");
                break;
            }
            // Reap before sleeping, so a SIGCHLD that arrived before the mask is not missed.
            reap(child, &mut exit);
            if exit.is_some() && drain_deadline.is_none() {
                self.state.timeline.init_exited_us = Some(unix_micros_now());
                diag!("init exited: {exit:?}");
                if let Err(e) = self.cgroup.kill_all() {
                    diag!("{e}");
                }
                drain_deadline = Some(Instant::now() + DRAIN_TIMEOUT);
                continue;
            }
            let mut fds: Vec<PollFd> = Vec::new();
            let mut which: Vec<usize> = Vec::new();
            for (i, (fd, _, _)) in streams.iter().enumerate() {
                if let Some(fd) = fd {
                    let mut flags = PollFlags::POLLIN;
                    if i == 0 && attach.is_some() && !to_terminal.is_empty() {
                        flags |= PollFlags::POLLOUT;
                    }
                    fds.push(PollFd::new(fd.as_fd(), flags));
                    which.push(i);
                }
            }
            let sig_slot = sigfd.as_ref().map(|s| {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let attach_base = fds.len();
            if let Some(a) = attach.as_ref() {
                fds.push(PollFd::new(a.listener.as_fd(), PollFlags::POLLIN));
                for c in &a.clients {
                    let mut flags = PollFlags::POLLIN;
                    if c.wants_write() {
                        flags |= PollFlags::POLLOUT;
                    }
                    fds.push(PollFd::new(c.stream.as_fd(), flags));
                }
            }
            let timeout = if drain_deadline.is_some() || sigfd.is_none() {
                PollTimeout::from(100u16)
            } else {
                PollTimeout::NONE
            };
            if poll(&mut fds, timeout).is_err() {
                continue;
            }
            let revents: Vec<PollFlags> = fds
                .iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect();
            drop(fds);
            if sig_slot.is_some() {
                if let Some(s) = sigfd.as_mut() {
                    while let Ok(Some(_)) = s.read_signal() {}
                }
            }
            if let Some(a) = attach.as_mut() {
                if !revents[attach_base].is_empty() {
                    a.accept();
                }
                // Clients from the last to the first, so a departure does not shift the rest.
                let clients = revents.len() - attach_base - 1;
                let mut requests = Vec::new();
                for i in (0..clients.min(a.clients.len())).rev() {
                    let r = revents[attach_base + 1 + i];
                    if r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                        requests.extend(a.read_client(i));
                    }
                }
                a.flush_all();
                if let Some(master) = streams[0].0.as_ref() {
                    for req in requests {
                        match req {
                            attach::Request::Input(bytes) => to_terminal.extend(bytes),
                            attach::Request::Close => to_terminal.push(EOT),
                            attach::Request::Resize(rows, cols) => {
                                let _ = sys::set_window_size(master.as_fd(), rows, cols);
                            }
                        }
                    }
                    if !to_terminal.is_empty() {
                        match unistd::write(master, &to_terminal) {
                            Ok(n) => {
                                to_terminal.drain(..n);
                            }
                            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                            Err(_) => to_terminal.clear(),
                        }
                    }
                }
            }
            for (slot, &i) in which.iter().enumerate() {
                if !revents[slot]
                    .intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                {
                    continue;
                }
                let (fd, stream, splitter) = &mut streams[i];
                let n = match fd.as_ref().map(|f| unistd::read(f, &mut buf)) {
                    Some(Ok(n)) => n,
                    Some(Err(nix::errno::Errno::EINTR)) | Some(Err(nix::errno::Errno::EAGAIN)) => {
                        continue
                    }
                    // EIO on a terminal: its last slave side closed, the same as end of file.
                    _ => 0,
                };
                let records = if n == 0 {
                    *fd = None;
                    splitter.finish().into_iter().collect()
                } else {
                    if let Some(a) = attach.as_mut() {
                        a.output(&buf[..n]);
                    }
                    splitter.push(&buf[..n])
                };
                if let Some(log) = log.as_mut() {
                    for (full, text) in records {
                        let _ =
                            log.write_line(&format_line(SystemTime::now(), *stream, full, &text));
                    }
                }
            }
        }
        // Attached clients see the end (their connection closes) once the output is drained.
        drop(attach);
        for (_, stream, splitter) in streams.iter_mut() {
            if let (Some(log), Some((full, text))) = (log.as_mut(), splitter.finish()) {
                let _ = log.write_line(&format_line(SystemTime::now(), *stream, full, &text));
            }
        }
        // Not fsynced, as Docker and containerd do not: the log is complete for readers once
        // written, and a host crash ends the container anyway.
        self.record_exit(exit);
        self.cleanup();
    }

    fn record_exit(&mut self, exit: Option<WaitStatus>) {
        let memory = self.cgroup.memory();
        match exit {
            Some(WaitStatus::Exited(_, code)) => self.state.exit_code = Some(code),
            Some(WaitStatus::Signaled(_, sig, _)) => self.state.signal = Some(sig as i32),
            _ => {}
        }
        self.state.oom_killed = memory.oom_kills > 0;
        self.state.status = if self.state.oom_killed {
            Status::OomKilled
        } else {
            Status::Exited
        };
        self.state.final_memory = Some(memory);
        self.state.final_pids = self.cgroup.pids();
        self.state.finished_ms = Some(unix_millis_now());
        self.save();
        // The agent reports the end from here on, while the clean-up runs.
        drop(self.agent_pipe.take());
        diag!(
            "container {} ended: status {:?}, exit code {:?}, signal {:?}, oom kills {}",
            self.cfg.id,
            self.state.status,
            self.state.exit_code,
            self.state.signal,
            memory.oom_kills
        );
    }

    /// Bridge mode: connects the container (its init waiting to be released) through CNI.
    fn connect(&mut self, child: Pid) -> Result<(), Failure> {
        let Some(plan) = &self.cfg.network else {
            return Ok(());
        };
        let names = [self.cfg.hostname.as_str(), self.cfg.id.as_str()];
        let status = crate::network::connect(
            &self.cfg.dir,
            &self.cfg.id,
            child.as_raw() as u32,
            plan,
            &names,
        )
        .map_err(|e| Failure::new(Step::Network, e))?;
        self.state.network = Some(status);
        Ok(())
    }

    /// Removes everything the container had on the host except its state directory.
    fn cleanup(&mut self) {
        let started = Instant::now();
        let processes_gone = match self.cgroup.kill_all() {
            Ok(()) => true,
            Err(e) => {
                diag!("{e}");
                false
            }
        };
        let killed = started.elapsed();
        // Before the unmount: DEL may enter the pinned network namespace.
        let network_left =
            match crate::network::disconnect_after_exit(&self.cfg.dir, processes_gone) {
                Ok(_) => false,
                Err(e) => {
                    diag!("disconnecting the network: {e}");
                    true
                }
            };
        let left = unmount_below(&self.cfg.dir);
        let unmounted = started.elapsed();
        if !left.is_empty() {
            diag!("could not unmount {left:?}");
        }
        if let Err(e) = self.cgroup.remove() {
            diag!("{e}");
        }
        self.state.cleaned_up = left.is_empty() && !network_left;
        self.state.timeline.cleaned_up_us = Some(unix_micros_now());
        self.save();
        diag!(
            "cleaned up in {:?} (processes gone after {killed:?}, unmounted after {unmounted:?})",
            started.elapsed()
        );
    }
}

/// Reaps every exited child without blocking; records the init's status.
fn reap(init: Pid, exit: &mut Option<WaitStatus>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(status) => {
                if status.pid() == Some(init) {
                    *exit = Some(status);
                }
            }
        }
    }
}

/// The failure the init reported, read once it is gone (so the pipe ends).
fn reported_failure(report: impl std::io::BufRead) -> Option<Failure> {
    report.lines().map_while(Result::ok).find_map(|line| {
        match serde_json::from_str::<InitMessage>(&line) {
            Ok(InitMessage::Failed(f)) => Some(f),
            _ => None,
        }
    })
}

fn clone_flags(cfg: &SupervisorConfig) -> CloneFlags {
    cfg.spec
        .namespaces
        .iter()
        // The cgroup namespace is unshared by the init once it sits in its own cgroup, so
        // that one becomes its root.
        .filter(|ns| **ns != Namespace::Cgroup)
        .fold(CloneFlags::empty(), |flags, ns| {
            flags | init::clone_flag(*ns)
        })
}

/// Formats a uid/gid map as the kernel reads it.
pub fn format_id_map(map: &[IdMap]) -> String {
    map.iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect()
}

fn write_id_maps(child: Pid, uid_map: &[IdMap], gid_map: &[IdMap]) -> Result<(), Failure> {
    for (file, map) in [("uid_map", uid_map), ("gid_map", gid_map)] {
        let path = format!("/proc/{child}/{file}");
        std::fs::write(&path, format_id_map(map))
            .map_err(|e| Failure::new(Step::UserNamespace, format!("writing {path}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_map_format() {
        assert_eq!(format_id_map(&[IdMap::DEFAULT]), "0 100000 65536\n");
    }
}
