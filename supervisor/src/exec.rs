//! Running a further command inside a running container (`hutch-supervisor exec`), like
//! `nsenter` + `chroot`: the helper joins the container's cgroup, enters each of its private
//! namespaces with `setns` (user first, so it owns the rest; mount last), takes its root,
//! forks (a pid namespace applies to children) and execs the command with the container's
//! environment. Output goes to the helper's own stdout and stderr, which the agent reads.
//! The outcome (exit code, signal, or the step that failed) is written as JSON to a result
//! file the agent names, so it never mixes with the command's output.
//!
//! `setns` into a user or mount namespace is refused to multithreaded processes, which is
//! why this is a separate single-threaded program and not code in the agent.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{open, OFlag};
use nix::sched::setns;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd;
use serde::{Deserialize, Serialize};

use crate::cgroup::ContainerCgroup;
use crate::fsutil::read_json;
use crate::init::{
    become_root_in_user_namespace, clone_flag, harden_and_exec, report, InitMessage,
};
use crate::security::Filters;
use crate::state::{ContainerState, Failure, StatePaths, Status, SupervisorConfig};
use crate::sys;
use hutch_core::spec::Namespace;
use hutch_core::step::Step;

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Exit code, when the command exited.
    pub exit_code: Option<i32>,
    /// Signal, when a signal killed it.
    pub signal: Option<i32>,
    /// The step that failed before the command ran.
    pub failure: Option<Failure>,
}

/// Entry point of `hutch-supervisor exec DIR RESULT -- ARGV...` and, with `tty`, of
/// `hutch-supervisor exec-tty ...`: stdin is then a terminal, which the command gets as its
/// controlling terminal in a session of its own (job control, Ctrl-C, window size).
pub fn main_exec(dir: &Path, result_file: &Path, argv: Vec<String>, tty: bool) -> i32 {
    // Opened before entering the container: afterwards the host's paths are out of reach.
    let mut out = match std::fs::File::create(result_file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "hutch-supervisor exec: cannot create {}: {e}",
                result_file.display()
            );
            return 1;
        }
    };
    let result = exec_in(dir, argv, tty).unwrap_or_else(|f| ExecResult {
        exit_code: None,
        signal: None,
        failure: Some(f),
    });
    let written = serde_json::to_vec(&result)
        .map_err(std::io::Error::other)
        .and_then(|data| std::io::Write::write_all(&mut out, &data));
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "hutch-supervisor exec: cannot write {}: {e}",
                result_file.display()
            );
            1
        }
    }
}

/// Order in which namespaces are entered: user first (it grants the rights for the others),
/// mount last (it changes the root, after which /proc paths of the host are gone).
const SETNS_ORDER: [Namespace; 7] = [
    Namespace::User,
    Namespace::Ipc,
    Namespace::Uts,
    Namespace::Net,
    Namespace::Pid,
    Namespace::Cgroup,
    Namespace::Mount,
];

fn exec_in(dir: &Path, argv: Vec<String>, tty: bool) -> Result<ExecResult, Failure> {
    if argv.is_empty() || argv[0].is_empty() {
        return Err(Failure::new(Step::Exec, "command is empty"));
    }
    let mut cfg: SupervisorConfig = read_json(&StatePaths::config(dir)).map_err(|e| {
        Failure::new(
            Step::State,
            format!("reading {}: {e}", StatePaths::config(dir).display()),
        )
    })?;
    let state: ContainerState = read_json(&StatePaths::state(dir)).map_err(|e| {
        Failure::new(
            Step::State,
            format!("reading {}: {e}", StatePaths::state(dir).display()),
        )
    })?;
    let pid = match (state.status, state.pid) {
        (Status::Running, Some(pid)) => pid,
        (status, _) => {
            return Err(Failure::new(
                Step::State,
                format!("container {} is {status:?}, not running", cfg.id),
            ))
        }
    };
    let cgroup = ContainerCgroup::open(cfg.cgroup.clone());
    if !cgroup.path().procs().contains(&pid) {
        return Err(Failure::new(
            Step::State,
            format!("container {} has exited", cfg.id),
        ));
    }

    // Open everything of the container before entering anything.
    let open_dir = |p: &str| {
        open(
            p,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    let root = open_dir(&format!("/proc/{pid}/root"))
        .map_err(|e| Failure::new(Step::Enter, format!("opening its root: {e}")))?;
    let mut ns_fds: Vec<(Namespace, OwnedFd)> = Vec::new();
    for ns in SETNS_ORDER.iter().filter(|ns| cfg.spec.has(**ns)) {
        let path = format!("/proc/{pid}/ns/{}", ns.proc_name());
        let fd = open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Failure::new(Step::Enter, format!("opening {path}: {e}")))?;
        ns_fds.push((*ns, fd));
    }

    cgroup
        .path()
        .add_this_process()
        .map_err(|e| Failure::new(Step::Cgroup, e.to_string()))?;
    for (ns, fd) in &ns_fds {
        setns(fd, clone_flag(*ns))
            .map_err(|e| Failure::new(Step::Enter, format!("setns {ns}: {}", e.desc())))?;
    }
    if !cfg.spec.has(Namespace::Mount) {
        unistd::fchdir(&root)
            .map_err(|e| Failure::new(Step::Enter, format!("entering its root: {e}")))?;
        unistd::chroot(".").map_err(|e| Failure::new(Step::Enter, format!("chroot: {e}")))?;
    }
    drop(root);
    if cfg.spec.has(Namespace::User) {
        become_root_in_user_namespace()?;
    }
    if tty {
        // The terminal of the container's own devpts (tty, ps and ttyname know it): its
        // master goes to the agent over stdin (a socket), the slave becomes this helper's
        // stdio, which the command inherits.
        take_own_terminal_for_exec(cfg.spec.security.identity())?;
    }
    let workdir = if cfg.spec.workdir.is_empty() {
        "/".to_string()
    } else {
        cfg.spec.workdir.clone()
    };
    unistd::chdir(workdir.as_str())
        .map_err(|e| Failure::new(Step::Workdir, format!("working directory '{workdir}': {e}")))?;

    cfg.spec.command = argv;
    if tty {
        // The client's terminal type when it gave a sane one, else xterm.
        match std::env::var(EXEC_TERM_VAR)
            .ok()
            .filter(|t| is_terminal_name(t))
        {
            Some(term) => {
                cfg.spec.env.insert("TERM".into(), term);
            }
            None => {
                cfg.spec
                    .env
                    .entry("TERM".into())
                    .or_insert_with(|| "xterm".into());
            }
        }
    }
    let (report_r, report_w) = unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| Failure::new(Step::Exec, format!("pipe: {e}")))?;
    let filters = Filters::compile(&cfg.spec.effective_security())
        .map_err(|e| Failure::new(Step::Security, e.to_string()))?;
    // SAFETY: the exec helper (`hutch-supervisor exec`) is single-threaded: it starts no thread.
    let forked = unsafe { sys::fork_single_threaded() };
    let child = match forked.map_err(|e| Failure::new(Step::Exec, format!("fork: {e}")))? {
        sys::Forked::Child => {
            if tty {
                let taken = unistd::setsid()
                    .map_err(|e| Failure::new(Step::Terminal, format!("setsid: {e}")))
                    .and_then(|_| {
                        sys::set_controlling_terminal(0).map_err(|e| {
                            Failure::new(Step::Terminal, format!("taking the terminal: {e}"))
                        })
                    });
                if let Err(failure) = taken {
                    report(report_w.as_raw_fd(), &InitMessage::Failed(failure));
                    std::process::exit(127);
                }
            }
            let failure = harden_and_exec(&cfg, &filters);
            report(report_w.as_raw_fd(), &InitMessage::Failed(failure));
            std::process::exit(127);
        }
        sys::Forked::Parent(child) => child,
    };
    drop(report_w);
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut std::fs::File::from(report_r), &mut text);
    let status =
        waitpid(child, None).map_err(|e| Failure::new(Step::Exec, format!("waiting: {e}")))?;
    if let Some(Ok(InitMessage::Failed(f))) =
        text.lines().next().map(serde_json::from_str::<InitMessage>)
    {
        return Err(f);
    }
    Ok(match status {
        WaitStatus::Exited(_, code) => ExecResult {
            exit_code: Some(code),
            signal: None,
            failure: None,
        },
        WaitStatus::Signaled(_, sig, _) => ExecResult {
            exit_code: None,
            signal: Some(sig as i32),
            failure: None,
        },
        other => {
            return Err(Failure::new(
                Step::Exec,
                format!("unexpected wait status {other:?}"),
            ))
        }
    })
}

/// The environment variable the agent passes the client's terminal type in.
pub const EXEC_TERM_VAR: &str = "HUTCH_EXEC_TERM";

/// Whether `t` can be a terminal type (`xterm-256color`, `screen.xterm`, `tmux+x`).
pub fn is_terminal_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_'))
}

/// Opens a terminal of the container's devpts (this process is in its mount namespace and
/// root now), sends the master over stdin (the agent's socket) and makes the slave this
/// process's stdin, stdout and stderr, owned by the command's user.
fn take_own_terminal_for_exec(owner: Option<(u32, u32)>) -> Result<(), Failure> {
    let terminal =
        |what: &str, e: nix::errno::Errno| Failure::new(Step::Terminal, format!("{what}: {e}"));
    let (master, slave) = sys::open_own_terminal(24, 80)
        .map_err(|e| terminal("opening a terminal of the container's devpts", e))?;
    if let Some((uid, gid)) = owner {
        unistd::fchown(
            &slave,
            Some(unistd::Uid::from_raw(uid)),
            Some(unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| terminal("giving the terminal to the user", e))?;
    }
    sys::send_fd(
        std::os::fd::AsFd::as_fd(&std::io::stdin()),
        std::os::fd::AsRawFd::as_raw_fd(&master),
    )
    .map_err(|e| terminal("handing the terminal to the agent", e))?;
    drop(master);
    unistd::dup2_stdin(&slave).map_err(|e| terminal("connecting the terminal", e))?;
    unistd::dup2_stdout(&slave).map_err(|e| terminal("connecting the terminal", e))?;
    unistd::dup2_stderr(&slave).map_err(|e| terminal("connecting the terminal", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn terminal_names() {
        for ok in [
            "xterm",
            "xterm-256color",
            "screen.xterm",
            "tmux+x",
            "vt_100",
        ] {
            assert!(super::is_terminal_name(ok), "{ok}");
        }
        for bad in ["", "x y", "a;rm", &"x".repeat(65), "é"] {
            assert!(!super::is_terminal_name(bad), "{bad}");
        }
    }
}
