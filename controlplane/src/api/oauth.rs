//! `/oauth/authorize` and `/oauth/exchange`: the REST face of adding a
//! subscription through its sign-in page.
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::JsonBody;
use crate::service::accounts::AccountView;
use crate::service::oauth::{AuthorizeRequest, AuthorizeStarted, ExchangeRequest};
use crate::service::{Actor, ServiceResult, Services};

/// Start a sign-in: the link to open and the state to finish it with (admins).
#[utoipa::path(post, path = "/oauth/authorize", tag = "oauth", request_body = AuthorizeRequest,
    responses((status = 200, body = AuthorizeStarted), super::Failures))]
pub async fn authorize(
    State(s): State<Services>,
    actor: Actor,
    JsonBody(req): JsonBody<AuthorizeRequest>,
) -> ServiceResult<Json<AuthorizeStarted>> {
    Ok(Json(s.start_sign_in(&actor, req).await?))
}

/// Finish a sign-in with the pasted code; the account is created (admins).
#[utoipa::path(post, path = "/oauth/exchange", tag = "oauth", request_body = ExchangeRequest,
    responses((status = 201, body = AccountView), super::Failures))]
pub async fn exchange(
    State(s): State<Services>,
    actor: Actor,
    JsonBody(req): JsonBody<ExchangeRequest>,
) -> ServiceResult<(StatusCode, Json<AccountView>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.finish_sign_in(&actor, req).await?),
    ))
}
