//! Client-facing errors, rendered in the native shape of the API called.
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

/// The API family whose error shape a caller expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    Anthropic,
    OpenAi,
    Google,
}

/// A relay error with the seed's messages.
#[derive(Debug, Clone)]
pub struct RelayError {
    pub status: StatusCode,
    pub message: String,
    /// Short class recorded in usage logs (`auth`, `model_not_allowed`, …).
    pub class: &'static str,
    /// Seconds, sent as `retry-after`.
    pub retry_after: Option<u64>,
}

impl RelayError {
    pub fn new(status: StatusCode, class: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            class,
            message: message.into(),
            retry_after: None,
        }
    }
    /// The key's cost limit or the user's packages (the seed's messages).
    pub fn quota(message: &'static str) -> Self {
        let class = if message == "model not allowed" {
            "model_not_allowed"
        } else {
            "quota_exceeded"
        };
        Self::new(StatusCode::FORBIDDEN, class, message)
    }
    /// Usage could not be delivered for long enough that the journal is full:
    /// serving more would go unbilled.
    pub fn journal_full() -> Self {
        Self {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "journal_full",
                "usage journal full: the control plane has been unreachable too long",
            )
        }
    }
    /// The disk refuses the usage journal's writes: serving more would go
    /// unbilled if the node then died.
    pub fn journal_unavailable() -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "journal_unavailable",
                "usage journal unavailable: usage cannot be written to disk",
            )
        }
    }
    /// The client filter refused the calling program (the seed's message,
    /// with the reason after it).
    pub fn client_not_allowed(reason: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "client_not_allowed",
            format!("client not allowed: {reason}"),
        )
    }
    /// The key's requests-per-minute limit.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "rate limit exceeded",
            )
        }
    }
    /// The key's or user's concurrent-request limit.
    pub fn concurrency_exceeded(whose: &str) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "concurrency_limited",
                format!("concurrency limit exceeded: too many requests in flight for this {whose}"),
            )
        }
    }
    /// Every usable account stayed at its concurrency limit while we waited.
    pub fn accounts_busy() -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "accounts_busy",
                "account not available: every account is at its concurrency limit",
            )
        }
    }
    pub fn invalid_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "invalid api key",
        )
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn model_not_allowed() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "model_not_allowed",
            "model not allowed",
        )
    }
    pub fn no_account() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_account",
            "account not available",
        )
    }
    /// The model's price could not be read: serving it would bill nothing.
    pub fn price_unavailable() -> Self {
        Self {
            retry_after: Some(30),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "price_unavailable",
                "this model's price is unavailable; the operator has been told",
            )
        }
    }
    pub fn not_ready() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "relay is starting; no configuration yet",
        )
    }
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", message)
    }
    pub fn timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "upstream timed out",
        )
    }

    /// Anthropic's `error.type` for this status.
    fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 413 | 404 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            _ => "api_error",
        }
    }

    fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 404 | 413 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            429 => "rate_limit_exceeded",
            _ => "api_error",
        }
    }

    fn google_status(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 413 => "INVALID_ARGUMENT",
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            504 => "DEADLINE_EXCEEDED",
            _ => "INTERNAL",
        }
    }

    pub fn body(&self, shape: ErrorShape) -> serde_json::Value {
        match shape {
            ErrorShape::Anthropic => json!({
                "type": "error",
                "error": { "type": self.anthropic_type(), "message": self.message },
            }),
            ErrorShape::OpenAi => json!({
                "error": { "message": self.message, "type": self.openai_type(), "param": null, "code": self.class },
            }),
            ErrorShape::Google => json!({
                "error": { "code": self.status.as_u16(), "message": self.message, "status": self.google_status() },
            }),
        }
    }

    /// The answer a client gets, in its API's shape.
    pub fn into_response(self, shape: ErrorShape, request_id: &HeaderValue) -> Response<Bytes> {
        let mut response = crate::answer::json(self.status, &self.body(shape), request_id);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_each_api() {
        let e = RelayError::invalid_key();
        assert_eq!(
            e.body(ErrorShape::Anthropic),
            json!({"type":"error","error":{"type":"authentication_error","message":"invalid api key"}})
        );
        assert_eq!(
            e.body(ErrorShape::OpenAi)["error"]["message"],
            "invalid api key"
        );
        assert_eq!(
            e.body(ErrorShape::Google)["error"]["status"],
            "UNAUTHENTICATED"
        );
        assert_eq!(
            RelayError::model_not_allowed().body(ErrorShape::Anthropic)["error"]["type"],
            "permission_error"
        );
    }

    #[test]
    fn the_answer_carries_status_shape_request_id_and_retry_after() {
        let id = HeaderValue::from_static("req-1");
        let answer = RelayError::rate_limited(3).into_response(ErrorShape::OpenAi, &id);
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.headers()["content-type"], "application/json");
        assert_eq!(answer.headers()["x-request-id"], "req-1");
        assert_eq!(answer.headers()["retry-after"], "3");
        let body: serde_json::Value = serde_json::from_slice(answer.body()).unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
    }
}
