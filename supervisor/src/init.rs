//! The container's init: what the child of the supervisor does between `clone` and `exec`.
//!
//! The supervisor clones this process into its new namespaces (user first, so it owns the
//! others) and, on cgroup v2, into the container's cgroup; on v1 the init moves itself
//! there first thing (see `cgroup::SelfEntry`). The supervisor writes its uid/gid maps,
//! then releases it. From there, in order:
//!
//! 1. become root of the user namespace (when private); unshare the cgroup namespace now that
//!    the process sits in its own cgroup, so that cgroup becomes its `/`;
//! 2. with a private mount namespace, make every mount private (nothing propagates back to the
//!    host), bind the rootfs onto itself so it can become the root, and mount the spec's
//!    binds, volumes and tmpfs in it ([`crate::container_mounts`]);
//! 3. mount `/proc`, a minimal `/dev` (null, zero, full, random, urandom, tty, pts + ptmx,
//!    shm), and `/sys` read-only when the network namespace is private;
//! 4. bring `lo` up (network namespace; the kernel creates it down) and set the hostname
//!    (uts namespace);
//! 5. `pivot_root` into the rootfs and detach the old root (with a private mount namespace),
//!    or `chroot` like the tutorial when the mount table is shared with the host (pivoting
//!    would change the host's own root);
//! 6. report the namespace inodes, enter the working directory, restore default signal
//!    handling and `exec` the command.
//!
//! A failing step is reported to the supervisor over a close-on-exec pipe, as a
//! [`Failure`] naming the step; a successful `exec` closes the pipe with nothing written.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{self, Gid, Uid};
use serde::{Deserialize, Serialize};

use crate::cgroup::SelfEntry;
use crate::security::{Filters, MASKED_PATHS, READ_ONLY_PATHS};
use crate::state::{Failure, SupervisorConfig};
use crate::sys;
use hutch_core::spec::Namespace;
use hutch_core::step::Step;

/// `PATH` inside a container unless its spec sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the init tells the supervisor before `exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum InitMessage {
    /// Namespace inodes as seen from inside, just before `exec`.
    Namespaces(Vec<(Namespace, u64)>),
    /// A step failed; the init exits.
    Failed(Failure),
}

/// The file descriptors the init works with (all opened by the supervisor before `clone`).
#[derive(Debug, Clone, Copy)]
pub struct InitIo {
    /// Read end of the release pipe: one byte arrives when cgroup and id maps are in place.
    pub release: RawFd,
    /// Write end of the close-on-exec report pipe.
    pub report: RawFd,
    /// Becomes the command's stdout.
    pub stdout: RawFd,
    /// Becomes the command's stderr.
    pub stderr: RawFd,
    /// With a terminal: the socket the init sends the terminal's master over, once it has
    /// opened the terminal from the container's own devpts (then that terminal becomes the
    /// command's stdin, stdout, stderr and controlling terminal).
    pub console: Option<RawFd>,
}

fn errno(step: Step, what: impl std::fmt::Display, e: Errno) -> Failure {
    Failure::new(step, format!("{what}: {} ({e:?})", e.desc()))
}

/// Sends one message to the supervisor. A failed write leaves nothing to do: the
/// supervisor then sees the pipe close without a message.
pub fn report(fd: RawFd, message: &InitMessage) {
    let Ok(mut line) = serde_json::to_vec(message) else {
        return;
    };
    line.push(b'\n');
    let fd = borrow_fd(fd);
    let mut written = 0;
    while written < line.len() {
        match unistd::write(fd, &line[written..]) {
            Ok(n) if n > 0 => written += n,
            _ => return,
        }
    }
}

fn borrow_fd(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: the fds handed to the init are opened by the supervisor before clone and stay
    // open in this process until it execs or exits.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// The child's entry point after `clone`: never returns on success (the command replaces
/// this process); on failure reports the step and returns the exit status 127.
pub fn run(
    cfg: &SupervisorConfig,
    io: InitIo,
    cgroup: Option<&SelfEntry>,
    filters: &Filters,
) -> isize {
    if let Err(failure) = setup_and_exec(cfg, io, cgroup, filters) {
        report(io.report, &InitMessage::Failed(failure));
    }
    127
}

fn setup_and_exec(
    cfg: &SupervisorConfig,
    io: InitIo,
    cgroup: Option<&SelfEntry>,
    filters: &Filters,
) -> Result<(), Failure> {
    let spec = &cfg.spec;
    // stdio first, so that even a failing command's output would be captured.
    let devnull = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| errno(Step::Stdio, "opening /dev/null", e))?;
    let redirect = |e| errno(Step::Stdio, "redirecting output", e);
    unistd::dup2_stdin(std::os::fd::AsFd::as_fd(&devnull)).map_err(redirect)?;
    unistd::dup2_stdout(borrow_fd(io.stdout)).map_err(redirect)?;
    unistd::dup2_stderr(borrow_fd(io.stderr)).map_err(redirect)?;

    // Into the container's cgroup before anything of the container runs (a clone of the
    // single-threaded supervisor has one thread); without an entry the supervisor has
    // moved it by pid before the release.
    if let Some(entry) = cgroup {
        entry
            .enter()
            .map_err(|e| Failure::new(Step::Cgroup, format!("entering the cgroup: {e}")))?;
    }

    let mut byte = [0u8; 1];
    match unistd::read(borrow_fd(io.release), &mut byte) {
        Ok(1) => {}
        _ => {
            return Err(Failure::new(
                Step::Start,
                "the supervisor did not release the container",
            ))
        }
    }

    if spec.has(Namespace::User) {
        become_root_in_user_namespace()?;
    }
    if spec.has(Namespace::Cgroup) {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| errno(Step::CgroupNamespace, "unshare", e))?;
    }

    let root = cfg.layer().merged;
    let private_mounts = spec.has(Namespace::Mount);
    if private_mounts {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| errno(Step::MountNamespace, "making mounts private", e))?;
        mount(
            Some(&root),
            &root,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| errno(Step::Rootfs, format!("binding {}", root.display()), e))?;
        crate::container_mounts::mount_all(&root, &cfg.dir, &cfg.mounts, spec.security.privileged)?;
    }
    mount_proc_dev_sys(&root, spec.has(Namespace::Net), spec.has(Namespace::User))?;
    if spec.security.masks_paths() {
        mask_paths(&root)?;
    }
    if private_mounts && cfg.network.is_some() {
        crate::network::bind_name_files(&cfg.dir, &root)
            .map_err(|e| Failure::new(Step::Network, e))?;
    }

    if spec.has(Namespace::Net) {
        sys::bring_loopback_up().map_err(|e| errno(Step::Network, "bringing lo up", e))?;
    }
    if spec.has(Namespace::Uts) {
        unistd::sethostname(&cfg.hostname)
            .map_err(|e| errno(Step::Hostname, format!("setting '{}'", cfg.hostname), e))?;
    }

    if private_mounts {
        pivot_into(&root)?;
        if spec.read_only_rootfs {
            // A bind remount sets the mount's flags anew: keep nodev (see mount_layer).
            let nodev = if spec.security.privileged {
                MsFlags::empty()
            } else {
                MsFlags::MS_NODEV
            };
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | nodev,
                None::<&str>,
            )
            .map_err(|e| errno(Step::Rootfs, "remounting / read-only", e))?;
        }
    } else {
        unistd::chroot(&root).map_err(|e| errno(Step::Chroot, root.display(), e))?;
    }

    if let Some(console) = io.console {
        take_own_terminal(console, spec.security.identity())?;
    }
    report(io.report, &InitMessage::Namespaces(own_namespaces()));

    let workdir = if spec.workdir.is_empty() {
        "/"
    } else {
        spec.workdir.as_str()
    };
    unistd::chdir(workdir)
        .map_err(|e| errno(Step::Workdir, format!("working directory '{workdir}'"), e))?;

    Err(harden_and_exec(cfg, filters))
}

/// Opens a terminal from the devpts instance of the root the init is now in (the
/// container's own), sends its master to the supervisor over `console`, and makes it this
/// process's stdin, stdout, stderr and controlling terminal, in a session of its own (job
/// control, Ctrl-C and window sizes reach the command).
fn take_own_terminal(console: RawFd, owner: Option<(u32, u32)>) -> Result<(), Failure> {
    let (master, slave) = sys::open_own_terminal(24, 80).map_err(|e| {
        errno(
            Step::Terminal,
            "opening a terminal of the container's devpts",
            e,
        )
    })?;
    // The command's user owns its terminal (programs reopen /dev/pts/N), as with runc.
    if let Some((uid, gid)) = owner {
        unistd::fchown(&slave, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| errno(Step::Terminal, "giving the terminal to the user", e))?;
    }
    sys::send_fd(borrow_fd(console), std::os::fd::AsRawFd::as_raw_fd(&master))
        .map_err(|e| errno(Step::Terminal, "handing the terminal to the supervisor", e))?;
    drop(master);
    let _ = unistd::close(console);
    unistd::setsid().map_err(|e| errno(Step::Terminal, "setsid", e))?;
    let redirect = |e| errno(Step::Terminal, "connecting the terminal", e);
    unistd::dup2_stdin(&slave).map_err(redirect)?;
    unistd::dup2_stdout(&slave).map_err(redirect)?;
    unistd::dup2_stderr(&slave).map_err(redirect)?;
    drop(slave);
    sys::set_controlling_terminal(0).map_err(|e| errno(Step::Terminal, "taking the terminal", e))
}

/// Drops what the container may not do (every descriptor but 0-2, capabilities,
/// `no_new_privs`, seccomp; see [`crate::security`]), then execs its command. Returns only on failure, with the reason.
pub fn harden_and_exec(cfg: &SupervisorConfig, filters: &Filters) -> Failure {
    // Only stdin, stdout and stderr reach the command: whatever else this process holds
    // (inherited from the agent or whoever started it) closes at exec.
    if let Err(e) = sys::close_on_exec_from(3) {
        return errno(Step::Exec, "marking descriptors close-on-exec", e);
    }
    if let Err(e) = crate::security::harden_before_exec(&cfg.spec.effective_security(), filters) {
        return Failure::new(Step::Security, e.to_string());
    }
    exec_command(cfg)
}

/// Becomes uid and gid 0 of the user namespace this process is in, with no extra groups.
pub fn become_root_in_user_namespace() -> Result<(), Failure> {
    unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(|e| errno(Step::UserNamespace, "becoming gid 0", e))?;
    unistd::setgroups(&[]).map_err(|e| errno(Step::UserNamespace, "dropping groups", e))?;
    unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(|e| errno(Step::UserNamespace, "becoming uid 0", e))
}

/// Execs `cfg.spec.command` with the container's environment, looked up in its `PATH`,
/// with default signal handling. Returns only on failure, with the reason.
pub fn exec_command(cfg: &SupervisorConfig) -> Failure {
    let env = environment(cfg);
    let path_var = env
        .iter()
        .find_map(|(k, v)| (k == "PATH").then_some(v.as_str()))
        .unwrap_or(DEFAULT_PATH);
    let program = match resolve_command(&cfg.spec.command[0], path_var) {
        Ok(p) => p,
        Err(f) => return f,
    };
    let env_lines: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let prepared = to_cstrings(&cfg.spec.command).and_then(|argv| {
        let envp = to_cstrings(&env_lines)?;
        let program_c = CString::new(program.as_os_str().as_encoded_bytes())
            .map_err(|_| Failure::new(Step::Exec, "command contains a NUL byte"))?;
        Ok((argv, envp, program_c))
    });
    let (argv, envp, program_c) = match prepared {
        Ok(p) => p,
        Err(f) => return f,
    };
    if let Err(e) = sys::reset_signals_for_exec() {
        return errno(Step::Exec, "resetting signals", e);
    }
    let e = unistd::execve(&program_c, &argv, &envp)
        .err()
        .unwrap_or(Errno::UnknownErrno);
    match e {
        Errno::ENOENT => Failure::new(
            Step::Exec,
            format!("'{}' does not exist in the container", program.display()),
        ),
        Errno::EACCES => Failure::new(
            Step::Exec,
            format!(
                "'{}' is not executable (permission denied)",
                program.display()
            ),
        ),
        Errno::ENOEXEC => Failure::new(
            Step::Exec,
            format!(
                "'{}' is not a program this kernel can run",
                program.display()
            ),
        ),
        other => errno(Step::Exec, program.display(), other),
    }
}

/// The `clone`/`setns` flag of a namespace kind.
pub fn clone_flag(ns: Namespace) -> nix::sched::CloneFlags {
    use nix::sched::CloneFlags;
    match ns {
        Namespace::Pid => CloneFlags::CLONE_NEWPID,
        Namespace::Ipc => CloneFlags::CLONE_NEWIPC,
        Namespace::Net => CloneFlags::CLONE_NEWNET,
        Namespace::Uts => CloneFlags::CLONE_NEWUTS,
        Namespace::Mount => CloneFlags::CLONE_NEWNS,
        Namespace::User => CloneFlags::CLONE_NEWUSER,
        Namespace::Cgroup => CloneFlags::CLONE_NEWCGROUP,
    }
}

fn to_cstrings(items: &[String]) -> Result<Vec<CString>, Failure> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| Failure::new(Step::Exec, format!("{s:?} contains a NUL byte")))
        })
        .collect()
}

/// The command's environment: defaults, then the spec's variables.
pub fn environment(cfg: &SupervisorConfig) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), "/root".into()),
    ];
    if cfg.spec.has(Namespace::Uts) {
        env.push(("HOSTNAME".into(), cfg.hostname.clone()));
    }
    // On a terminal, full-screen programs need to know which one (an exec's gets the same).
    if cfg.spec.tty {
        env.push(("TERM".into(), "xterm".into()));
    }
    for (k, v) in &cfg.spec.env {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// Finds `command` like a shell: a name with a `/` is used as is, otherwise the first
/// executable file of that name in `path_var`'s directories.
pub fn resolve_command(command: &str, path_var: &str) -> Result<PathBuf, Failure> {
    if command.contains('/') {
        return Ok(PathBuf::from(command));
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(command))
        .find(|p| p.is_file() && unistd::access(p, unistd::AccessFlags::X_OK).is_ok())
        .ok_or_else(|| {
            Failure::new(
                Step::Exec,
                format!("'{command}' not found in the container's PATH ({path_var})"),
            )
        })
}

fn mount_proc_dev_sys(root: &Path, private_net: bool, user_ns: bool) -> Result<(), Failure> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let target = |p: &str| root.join(p);
    let mkdir = |p: &Path, step: Step| {
        // A symlink here (an image's `proc -> /somewhere`) would be followed on the host:
        // the mount point must be the rootfs's own directory.
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(Failure::new(
                step,
                format!(
                    "{} is a symlink in the rootfs: a mount point must be a directory of its own",
                    p.display()
                ),
            ));
        }
        std::fs::create_dir_all(p)
            .map_err(|e| Failure::new(step, format!("creating {}: {e}", p.display())))
    };

    mkdir(&target("proc"), Step::MountProc)?;
    mount(
        Some("proc"),
        &target("proc"),
        Some("proc"),
        nosuid_nodev_noexec,
        None::<&str>,
    )
    .map_err(|e| errno(Step::MountProc, "mount -t proc proc /proc", e))?;

    let dev = target("dev");
    mkdir(&dev, Step::MountDev)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        // nodev: a node made here opens nothing; the nodes below are bind mounts of the
        // host's, each with its own mount flags.
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .map_err(|e| errno(Step::MountDev, "tmpfs on /dev", e))?;
    // Device nodes are bound from the host: mknod is not allowed in a user namespace, and a
    // bind works the same everywhere.
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let path = dev.join(node);
        std::fs::File::create(&path).map_err(|e| {
            Failure::new(Step::MountDev, format!("creating {}: {e}", path.display()))
        })?;
        mount(
            Some(&Path::new("/dev").join(node)),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| errno(Step::MountDev, format!("binding /dev/{node}"), e))?;
    }
    let pts = dev.join("pts");
    mkdir(&pts, Step::MountDevPts)?;
    let pts_options = if user_ns {
        "newinstance,ptmxmode=0666,mode=620"
    } else {
        "newinstance,ptmxmode=0666,mode=620,gid=5"
    };
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(pts_options),
    )
    .map_err(|e| errno(Step::MountDevPts, "devpts", e))?;
    let shm = dev.join("shm");
    mkdir(&shm, Step::MountDevShm)?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|e| errno(Step::MountDevShm, "tmpfs", e))?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link))
            .map_err(|e| Failure::new(Step::MountDev, format!("linking /dev/{link}: {e}")))?;
    }

    if private_net {
        let sys = target("sys");
        mkdir(&sys, Step::MountSys)?;
        mount(
            Some("sysfs"),
            &sys,
            Some("sysfs"),
            nosuid_nodev_noexec | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| errno(Step::MountSys, "sysfs read-only", e))?;
    }
    Ok(())
}

/// Hides what [`MASKED_PATHS`] names (files behind `/dev/null`, directories behind an empty
/// read-only tmpfs) and makes [`READ_ONLY_PATHS`] read-only, below `root`. Paths this kernel
/// does not have are skipped.
fn mask_paths(root: &Path) -> Result<(), Failure> {
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    for p in MASKED_PATHS {
        let path = root.join(p);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let done = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                &path,
                Some("tmpfs"),
                locked | MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            mount(
                Some("/dev/null"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        done.map_err(|e| errno(Step::MaskPaths, format!("masking /{p}"), e))?;
    }
    for p in READ_ONLY_PATHS {
        let path = root.join(p);
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        mount(
            Some(&path),
            &path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| {
            // The flags /proc was mounted with stay: in a user namespace they are locked.
            mount(
                None::<&str>,
                &path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
                None::<&str>,
            )
        })
        .map_err(|e| errno(Step::MaskPaths, format!("making /{p} read-only"), e))?;
    }
    Ok(())
}

/// firecracker's sequence: with the rootfs a mount point of a private mount namespace,
/// `pivot_root(".", ".")` stacks the old root under the new one, and a lazy unmount of "."
/// detaches it, so nothing of the host's tree stays reachable.
fn pivot_into(root: &Path) -> Result<(), Failure> {
    unistd::chdir(root).map_err(|e| errno(Step::PivotRoot, root.display(), e))?;
    unistd::pivot_root(".", ".")
        .map_err(|e| errno(Step::PivotRoot, "pivot_root(\".\", \".\")", e))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| errno(Step::PivotRoot, "detaching the old root", e))?;
    unistd::chdir("/").map_err(|e| errno(Step::PivotRoot, "chdir /", e))
}

/// Inodes of this process's namespaces.
pub fn own_namespaces() -> Vec<(Namespace, u64)> {
    namespaces_of("self")
}

/// Inodes of the namespaces of process `who` (`self` or a pid).
pub fn namespaces_of(who: &str) -> Vec<(Namespace, u64)> {
    Namespace::ALL
        .iter()
        .filter_map(|ns| {
            nix::sys::stat::stat(format!("/proc/{who}/ns/{}", ns.proc_name()).as_str())
                .ok()
                .map(|st| (*ns, st.st_ino))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_commands_in_path() {
        assert_eq!(
            resolve_command("/bin/x", "/nowhere").map(|p| p.display().to_string()),
            Ok("/bin/x".into())
        );
        assert_eq!(
            resolve_command("sh", "/nowhere:/bin:/usr/bin").map(|p| p.display().to_string()),
            Ok("/bin/sh".into())
        );
        let e = resolve_command("no-such-program-hutch", "/bin").expect_err("missing");
        assert_eq!(e.step, "exec");
        assert!(e.message.contains("not found"));
    }

    #[test]
    fn namespaces_of_self_are_all_there() {
        assert_eq!(own_namespaces().len(), Namespace::ALL.len());
    }
}
