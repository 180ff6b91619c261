//! `/settings`: the REST face of the runtime settings.
use axum::Json;
use axum::extract::State;

use super::JsonBody;
use crate::service::settings::{SettingsPatch, SettingsView};
use crate::service::{Actor, ServiceResult, Services};

/// The runtime settings, their types and limits (admins).
#[utoipa::path(get, path = "/settings", tag = "settings",
    responses((status = 200, body = SettingsView), super::Failures))]
pub async fn get(State(s): State<Services>, actor: Actor) -> ServiceResult<Json<SettingsView>> {
    Ok(Json(s.get_settings(&actor).await?))
}

/// Change runtime settings; `null` returns one to its default (admins).
#[utoipa::path(patch, path = "/settings", tag = "settings", request_body = SettingsPatch,
    responses((status = 200, body = SettingsView), super::Failures))]
pub async fn update(
    State(s): State<Services>,
    actor: Actor,
    JsonBody(patch): JsonBody<SettingsPatch>,
) -> ServiceResult<Json<SettingsView>> {
    Ok(Json(s.update_settings(&actor, patch).await?))
}
