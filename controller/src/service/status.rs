//! The one place where the controller's errors become gRPC status codes.

use tonic::Status;

use crate::cluster::ClusterError;

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Status {
        match e {
            ClusterError::InvalidArgument(m) => Status::invalid_argument(m),
            ClusterError::NotFound(m) => Status::not_found(m),
            ClusterError::AlreadyExists(m) => Status::already_exists(m),
            ClusterError::FailedPrecondition(m) => Status::failed_precondition(m),
            ClusterError::Unavailable(m) => Status::unavailable(m),
            ClusterError::OutOfRange(m) => Status::out_of_range(m),
            // A node's answer keeps its code; the message names the node.
            ClusterError::Node { node, status } => {
                Status::new(status.code(), format!("node {node}: {}", status.message()))
            }
            ClusterError::Random(e) => Status::internal(e.to_string()),
            e @ ClusterError::SyncFailed(_) => {
                Status::unavailable(format!("{e}: look before trying again"))
            }
            ClusterError::Store(crate::store::StoreError::NotLeader(m)) => {
                crate::leadership::not_leader_status(m)
            }
            ClusterError::Store(e @ crate::store::StoreError::Unknown { .. }) => {
                Status::unavailable(format!("{e}: look before trying again"))
            }
            ClusterError::Store(e) => {
                Status::unavailable(format!("{e}; nothing was changed, try again"))
            }
        }
    }
}
