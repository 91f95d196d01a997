//! Services through the client: declare, read, change, scale, roll back, delete, watch.

use crate::client::{BoxStream, Client};
use crate::error::{Error, Result};
use hutch_proto::v1;
use tokio_stream::StreamExt;

impl Client {
    /// Records a service (idempotent by name and spec).
    pub async fn create_service(&self, request: v1::CreateServiceRequest) -> Result<v1::Service> {
        Ok(self
            .rpc()
            .create_service(self.request(request))
            .await?
            .into_inner())
    }

    /// One service, with its status.
    pub async fn service(&self, name: &str) -> Result<v1::Service> {
        Ok(self
            .rpc()
            .get_service(self.request(v1::GetServiceRequest { name: name.into() }))
            .await?
            .into_inner())
    }

    /// Every service.
    pub async fn services(&self) -> Result<v1::ListServicesResponse> {
        Ok(self
            .rpc()
            .list_services(self.request(v1::ListServicesRequest {}))
            .await?
            .into_inner())
    }

    /// Replaces a service's spec (a changed template rolls its replicas over).
    pub async fn update_service(&self, name: &str, spec: v1::ServiceSpec) -> Result<v1::Service> {
        Ok(self
            .rpc()
            .update_service(self.request(v1::UpdateServiceRequest {
                name: name.into(),
                spec: Some(spec),
            }))
            .await?
            .into_inner())
    }

    /// Changes a service's replica count.
    pub async fn scale_service(&self, name: &str, replicas: u32) -> Result<v1::Service> {
        Ok(self
            .rpc()
            .scale_service(self.request(v1::ScaleServiceRequest {
                name: name.into(),
                replicas,
            }))
            .await?
            .into_inner())
    }

    /// Brings a service's previous template back.
    pub async fn rollback_service(&self, name: &str) -> Result<v1::Service> {
        Ok(self
            .rpc()
            .rollback_service(self.request(v1::RollbackServiceRequest { name: name.into() }))
            .await?
            .into_inner())
    }

    /// Forgets a service; its replicas are stopped and removed.
    pub async fn delete_service(&self, name: &str) -> Result<v1::Service> {
        self.rpc()
            .delete_service(self.request(v1::DeleteServiceRequest { name: name.into() }))
            .await?
            .into_inner()
            .service
            .ok_or_else(|| {
                Error::Status(tonic::Status::internal(
                    "the controller answered without the service",
                ))
            })
    }

    /// Creates or updates `services` at once, all or none; with `dry_run`, only what would
    /// change.
    pub async fn apply_services(
        &self,
        services: Vec<v1::CreateServiceRequest>,
        dry_run: bool,
    ) -> Result<v1::ApplyServicesResponse> {
        Ok(self
            .rpc()
            .apply_services(self.request(v1::ApplyServicesRequest { services, dry_run }))
            .await?
            .into_inner())
    }

    /// Every service change after `since_revision` (0: all kept), then live ones; only
    /// those of `names` when it is not empty.
    pub async fn watch_services(
        &self,
        since_revision: u64,
        names: Vec<String>,
    ) -> Result<BoxStream<v1::WatchEvent>> {
        let stream = self
            .rpc()
            .watch_services(v1::WatchServicesRequest {
                since_revision,
                services: names,
            })
            .await?
            .into_inner();
        Ok(Box::pin(stream.map(|r| r.map_err(Error::from))))
    }
}
