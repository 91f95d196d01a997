//! hutch-agent: everything one host needs to turn a container spec into a real, isolated,
//! memory-limited process and to know afterwards exactly what happened to it.
//!
//! The crate is a library with the `hutch-agent` binary (the per-host daemon and local admin
//! tool) on top. Each container is watched by `hutch-supervisor`, the small single-threaded
//! program of the `hutch-supervisor` crate, started by `exec` (never by forking this
//! multithreaded process); it creates the namespaces, clones the container's init, reaps it
//! and records how it ended.
//!
//! Modules, one concern each:
//! - [`runtime`]: the container lifecycle (run, stop, kill, wait, exec, remove) and the
//!   supervisors it drives.
//! - [`rootfs`]: the content-addressed rootfs store and per-container overlay layers.
//! - [`service`]: the `hutch.v1.Agent` gRPC service, registration with a controller, joining.
//! - [`network`]: the node's container network: CNI networks for bridged containers, the
//!   node's subnet, masquerading and routes to the other nodes.
//! - [`stats`]: what a container uses (CPU, network, block I/O, layer size, processes).
//! - [`volumes`]: named volumes, the directories the node keeps across containers.
//! - [`metrics`]: Prometheus metrics: per-container usage, containers by state, builds.
//! - [`events`]: the durable, sequence-numbered event log.
//! - [`config`]: flags, environment and the TOML file, merged and validated.
//! - [`node`]: what this host is (name, addresses, memory).
//! - Re-exported for the agent's callers: [`names`], [`spec`], [`seccomp_profile`] from
//!   `hutch-core`; [`cgroup`], [`fsutil`], [`mounts`], [`security`] from `hutch-supervisor`.

pub mod config;
pub mod events;
pub mod metrics;
pub mod network;
pub mod node;
pub mod rootfs;
pub mod runtime;
pub mod service;
pub mod stats;
pub mod volumes;

pub use hutch_core::{names, seccomp_profile, spec};
pub use hutch_supervisor::{cgroup, fsutil, mounts, security};
