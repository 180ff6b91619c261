//! The management gRPC service for operators' tooling (`aiproxy ctl`),
//! behind the node token.
use aiproxy_proto::v1 as pb;
use aiproxy_proto::v1::management_service_server::{ManagementService, ManagementServiceServer};
use tonic::{Request, Response, Status};

use crate::store::Store;

#[derive(Clone)]
pub struct ManageApi {
    store: Store,
    billing_tz: chrono::FixedOffset,
}

impl ManageApi {
    pub fn new(store: Store, billing_tz: chrono::FixedOffset) -> Self {
        Self { store, billing_tz }
    }

    pub fn into_server(
        self,
        node_token: String,
    ) -> tonic::service::interceptor::InterceptedService<
        ManagementServiceServer<ManageApi>,
        impl tonic::service::Interceptor + Clone,
    > {
        tonic::service::interceptor::InterceptedService::new(
            ManagementServiceServer::new(self),
            crate::grpc::require_token(node_token),
        )
    }
}

#[tonic::async_trait]
impl ManagementService for ManageApi {
    async fn check_consistency(
        &self,
        _request: Request<pb::ConsistencyRequest>,
    ) -> Result<Response<pb::ConsistencyReport>, Status> {
        let report = self
            .store
            .consistency(self.billing_tz)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ConsistencyReport {
            clean: report.clean,
            request_logs: report.request_logs.max(0) as u64,
            differences: report
                .differences
                .into_iter()
                .map(|d| pb::Difference {
                    table: d.table.to_string(),
                    row: d.row,
                    field: d.field.to_string(),
                    expected: d.expected,
                    actual: d.actual,
                })
                .collect(),
        }))
    }
}
