//! Answers the node makes itself (errors, model listings, health checks):
//! JSON or plain text tagged with the request id, as `Response<Bytes>`, for
//! the server and the relay to send as a `RelayBody`.
use aiproxy_shared::http::json_bytes;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

/// A JSON answer.
pub fn json(
    status: StatusCode,
    body: &serde_json::Value,
    request_id: &HeaderValue,
) -> Response<Bytes> {
    answer(status, json_bytes(body), "application/json", request_id)
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: &str, request_id: &HeaderValue) -> Response<Bytes> {
    answer(
        status,
        Bytes::copy_from_slice(body.as_bytes()),
        "text/plain; charset=utf-8",
        request_id,
    )
}

fn answer(
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    request_id: &HeaderValue,
) -> Response<Bytes> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("x-request-id", request_id.clone());
    resp
}
