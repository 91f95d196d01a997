//! hutch-controller: one endpoint for the whole cluster.
//!
//! Clients call `hutch.v1.Controller`; agents call `hutch.v1.Nodes` to register and
//! heartbeat. The controller keeps every record in a durable store, places containers on
//! nodes with room, starts them through the agents' `hutch.v1.Agent` API, follows each
//! agent's event stream and re-publishes every change with a cluster-wide revision.
//!
//! Modules, one concern each:
//! - [`scheduler`]: pure placement (filter, score, reservations).
//! - [`store`]: the durable state behind a small trait: redb (embedded) or etcd.
//! - [`cluster`]: the records and every change to them (containers, nodes, dispatch,
//!   reconciliation, rootfs across nodes).
//! - [`agents`]: gRPC channels to agents.
//! - [`service`]: the gRPC services and server.
//! - [`config`]: configuration from flags, environment and file.
//! - [`metrics`]: Prometheus metrics of the cluster (the gRPC ones are `hutch_server`'s).
//! - [`join`]: the cluster CA, the controller's certificate and join tokens.
//! - [`leader`]: leader election among controllers sharing one etcd.
//! - [`leadership`]: which cluster this controller serves, if it leads.
//! - [`migrate`]: copies one store's records into another (redb into etcd).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod agents;
pub mod cluster;
pub mod config;
pub mod join;
pub mod leader;
pub mod leadership;
pub mod metrics;
pub mod migrate;
pub mod scheduler;
pub mod service;
pub mod store;
