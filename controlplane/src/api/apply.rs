//! `POST /apply`: the REST face of declarative configuration.
use axum::Json;
use axum::extract::State;

use super::JsonBody;
use crate::service::apply::{Document, Report};
use crate::service::{Actor, ServiceResult, Services};

/// Create what is missing and update what exists, matched by name; applying
/// a document twice changes nothing the second time (admins).
#[utoipa::path(post, path = "/apply", tag = "apply", request_body = Document,
    responses((status = 200, body = Report), super::Failures))]
pub async fn apply(
    State(s): State<Services>,
    actor: Actor,
    JsonBody(doc): JsonBody<Document>,
) -> ServiceResult<Json<Report>> {
    Ok(Json(s.apply(&actor, doc).await?))
}
