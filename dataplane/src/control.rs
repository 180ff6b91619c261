//! The gRPC link to the control plane: an authenticated client (TLS for an
//! `https://` URL) that the snapshot feed, the usage reporter and the relay
//! share. It knows nothing of what travels over it.
use std::time::Duration;

use aiproxy_proto::v1::node_service_client::NodeServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Adds the node token to every call.
#[derive(Clone)]
pub(crate) struct NodeAuth(MetadataValue<Ascii>);

impl tonic::service::Interceptor for NodeAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub(crate) type Client = NodeServiceClient<InterceptedService<Channel, NodeAuth>>;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid control plane URL: {0}")]
    Url(String),
    #[error("node token is not a valid header value")]
    Token,
    #[error("TLS to the control plane: {0}")]
    Tls(String),
}

/// Where the control plane is: an `https://` URL is verified against the
/// public roots and `ca_pem` (a private CA), an `http://` one is plain.
pub fn endpoint(url: &str, ca_pem: Option<&[u8]>) -> Result<Endpoint, ControlError> {
    let endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|e| ControlError::Url(e.to_string()))?;
    if !url.starts_with("https://") {
        if ca_pem.is_some() {
            return Err(ControlError::Tls(
                "AIPROXY_GRPC_CA is set but the control plane URL is not https://".into(),
            ));
        }
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new().with_webpki_roots();
    if let Some(pem) = ca_pem {
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| ControlError::Tls(e.to_string()))
}

/// A lazily connecting client; calls fail fast while the control plane is down.
pub(crate) fn client(
    url: &str,
    ca_pem: Option<&[u8]>,
    node_token: &str,
) -> Result<Client, ControlError> {
    let endpoint = endpoint(url, ca_pem)?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let token: MetadataValue<Ascii> = format!("Bearer {node_token}")
        .parse()
        .map_err(|_| ControlError::Token)?;
    Ok(
        NodeServiceClient::with_interceptor(endpoint.connect_lazy(), NodeAuth(token))
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024),
    )
}
