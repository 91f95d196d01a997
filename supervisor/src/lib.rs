//! hutch-supervisor: the single-threaded programs of a container's life, and the host-level
//! pieces they and the agent share.
//!
//! The `hutch-supervisor` binary is started by the agent with `exec`: once as the zygote
//! that forks a supervisor per container (`zygote`; `run` where the zygote is unavailable)
//! and once per exec into a container (`exec`, `exec-tty`). It is single-threaded and has no
//! async runtime, so forking and cloning in it are sound; every `fork`/`clone` of hutch is
//! here ([`sys::fork_single_threaded`], [`sys::clone_process`], both `unsafe fn`s with
//! that contract). Everything the cloned child needs (the seccomp filters among it) is
//! prepared before the clone.
//!
//! Modules:
//! - [`supervisor`]: watching one container: its init, output, terminal, exit and cleanup.
//! - [`init`]: the container's first process, from `clone` to `execve`.
//! - [`exec`]: a command run inside a running container (`setns`, then `fork`).
//! - [`attach`]: the supervisor's attach socket and its framing.
//! - [`state`]: the state directory, the on-disk contract between agent and supervisor.
//! - [`logs`]: the log file's line format.
//! - [`security`]: applying capabilities, `no_new_privs` and seccomp to a process.
//! - [`cni`]: CNI plugins run per the specification (ADD, DEL, CHECK), the network record.
//! - [`network`]: a bridged container's namespace pinned, connected, named, disconnected.
//! - [`cgroup`]: cgroup v1 and v2 memory and pids limits, OOM records, kill and removal.
//! - [`overlay`], [`mounts`]: the container's root layer and unmounting.
//! - [`container_mounts`]: the spec's binds, volumes and tmpfs, mounted without following
//!   a symlink out of the root.
//! - [`fsutil`]: durable JSON files, atomically replaced.
//! - [`zygote`]: the one process per agent that forks supervisors on request.
//! - [`sys`]: the raw system calls, each in one small commented place.

pub mod attach;
pub mod cgroup;
pub mod cni;
pub mod container_mounts;
pub mod exec;
pub mod fsutil;
pub mod init;
pub mod logs;
pub mod mounts;
pub mod network;
pub mod overlay;
pub mod security;
pub mod state;
pub mod supervisor;
pub mod sys;
pub mod zygote;
