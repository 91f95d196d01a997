//! The client side of hutch's bearer tokens, shared by the SDK (clients) and the agent
//! (registering with a controller).

use tonic::metadata::{Ascii, MetadataValue};

pub use crate::names::CONTROLLER_TLS_NAME;

/// A tonic interceptor adding `authorization: Bearer TOKEN` to every call (nothing when
/// built without a token).
#[derive(Clone, Debug, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The interceptor for `token`; an error when the token cannot be a header value.
    pub fn new(token: Option<&str>) -> Result<BearerToken, String> {
        token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the token has characters a header cannot carry".to_string())
            })
            .transpose()
            .map(BearerToken)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
