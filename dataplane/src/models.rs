//! Model listings answered by the node itself: the models a key may use,
//! in the shape of the API the client speaks.
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use serde_json::{Value, json};

use crate::answer;
use crate::auth::authenticate;
use crate::errors::{ErrorShape, RelayError};
use crate::snapshot::SnapshotHolder;

/// Which listing was asked for.
#[derive(Debug, Clone, Copy)]
pub enum Listing {
    /// `GET /v1/models`: Anthropic's shape when `anthropic-version` is sent, else OpenAI's.
    V1,
    /// `GET /v1beta/models`: Gemini's shape, Gemini models only.
    Gemini,
}

pub fn list(
    holder: &SnapshotHolder,
    listing: Listing,
    headers: &HeaderMap,
    query: Option<&str>,
    request_id: &HeaderValue,
) -> Response<Bytes> {
    let anthropic = headers.contains_key("anthropic-version");
    let shape = match listing {
        Listing::Gemini => ErrorShape::Google,
        Listing::V1 if anthropic => ErrorShape::Anthropic,
        Listing::V1 => ErrorShape::OpenAi,
    };
    let Some(snapshot) = holder.load() else {
        return RelayError::not_ready().into_response(shape, request_id);
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let caller = match authenticate(&snapshot, headers, query, now_ms) {
        Ok(c) => c,
        Err(e) => return e.into_response(shape, request_id),
    };
    let mut models: Vec<&str> = if caller.key.allowed_models.is_empty() {
        snapshot.prices.models().collect()
    } else {
        caller
            .key
            .allowed_models
            .iter()
            .map(String::as_str)
            .collect()
    };
    models.sort_unstable();
    let body = match (listing, anthropic) {
        (Listing::Gemini, _) => gemini(&models),
        (Listing::V1, true) => anthropic_list(&models),
        (Listing::V1, false) => openai(&models),
    };
    answer::json(http::StatusCode::OK, &body, request_id)
}

fn openai(models: &[&str]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "aiproxy"}))
        .collect();
    json!({ "object": "list", "data": data })
}

fn anthropic_list(models: &[&str]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .map(|m| json!({"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}))
        .collect();
    json!({ "data": data, "has_more": false, "first_id": models.first(), "last_id": models.last() })
}

fn gemini(models: &[&str]) -> Value {
    let data: Vec<Value> = models
        .iter()
        .filter(|m| m.starts_with("gemini"))
        .map(|m| {
            json!({
                "name": format!("models/{m}"),
                "displayName": m,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
            })
        })
        .collect();
    json!({ "models": data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_in_each_shape() {
        let models = ["claude-sonnet-4-5", "gemini-2.5-pro", "gpt-4o"];
        assert_eq!(openai(&models)["data"][2]["id"], "gpt-4o");
        let a = anthropic_list(&models);
        assert_eq!(a["data"][0]["type"], "model");
        assert_eq!(a["last_id"], "gpt-4o");
        let g = gemini(&models);
        assert_eq!(g["models"].as_array().unwrap().len(), 1);
        assert_eq!(g["models"][0]["name"], "models/gemini-2.5-pro");
    }
}
