//! `/settings`: typed reads and validated writes of the runtime settings;
//! a change reaches the data planes with the next snapshot.
use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value};

use super::{ApiError, ApiResult, ApiState, AuthUser, JsonBody};
use crate::settings::{SystemSettings, validate};

pub async fn get(State(state): State<ApiState>, auth: AuthUser) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let settings = SystemSettings::load(&state.store, &state.setting_defaults).await?;
    Ok(Json(settings.to_json()))
}

pub async fn update(
    State(state): State<ApiState>,
    auth: AuthUser,
    JsonBody(patch): JsonBody<Map<String, Value>>,
) -> ApiResult<Json<Value>> {
    auth.require_admin()?;
    let change = validate(&patch).map_err(ApiError::BadRequest)?;
    state
        .store
        .save_system_configs(&change.set, &change.unset)
        .await?;
    tracing::info!(user = %auth.user.username, set = ?change.set.keys().collect::<Vec<_>>(), unset = ?change.unset, "settings changed");
    let settings = SystemSettings::load(&state.store, &state.setting_defaults).await?;
    Ok(Json(settings.to_json()))
}
