//! hutch-agent: everything one host needs to turn a container spec into a real, isolated,
//! memory-limited process and to know afterwards exactly what happened to it.
//!
//! The crate is a library with two thin binaries on top:
//! - `hutch-agent`, the per-host daemon and local admin tool;
//! - `hutch-supervisor`, the small single-threaded program started (by `exec`, never by forking
//!   the multithreaded agent) once per container. It creates the namespaces, forks the
//!   container's init, reaps it and records how it ended.
//!
//! Modules, one concern each:
//! - [`names`]: validation of the names that become paths (container ids, rootfs names).
//! - [`spec`]: the container spec and its pure validation.
//! - [`rootfs`]: the content-addressed rootfs store and per-container overlay layers.
//! - [`cgroup`]: one small interface over cgroup v1 and v2 for memory limits and OOM records.
//! - [`runtime`]: the container lifecycle (run, stop, kill, wait, exec, remove) and the
//!   supervisor it drives.

pub mod cgroup;
pub mod config;
pub mod events;
pub mod fsutil;
pub mod mounts;
pub mod names;
pub mod node;
pub mod rootfs;
pub mod runtime;
pub mod seccomp_profile;
pub mod security;
pub mod service;
pub mod spec;
