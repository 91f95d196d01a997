//! hutch-testkit: what hutch's tests share, as a crate of its own (a dev-dependency only):
//! real daemons and runtimes on loopback, each with its own port, state directory and cgroup
//! instance, on one debootstrapped rootfs shared by the whole test run; every resource named
//! uniquely and removed when the test ends, also when it fails.
//!
//! - [`host`]: a real runtime per test ([`TestHost`]), a real `hutch-agent` process
//!   ([`TestAgent`]), the shared rootfs, the workspace's binaries, leak checks.
//! - [`cluster`]: a real `hutch-controller` process ([`TestController`]) and agents
//!   registered with it ([`TestNode`]); request builders and waits.
//! - [`etcd`]: a real etcd cluster on loopback ([`TestEtcd`]).
//! - [`grpcurl`]: the real `grpcurl` as an outside client.
//! - [`images`]: OCI images and archives made here, and a real registry on loopback.
//! - [`relay`]: a TCP relay whose connections a test cuts ([`TcpRelay`]).
//! - [`rng`]: a seeded generator, so a randomized test's failure replays from its seed.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod etcd;
pub mod grpcurl;
pub mod host;
pub mod images;
pub mod relay;
pub mod rng;

pub use cluster::*;
pub use etcd::*;
pub use grpcurl::*;
pub use host::*;
pub use relay::TcpRelay;
pub use rng::Rng;
