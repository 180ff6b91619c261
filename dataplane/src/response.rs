//! Upstream answers made fit for the client: hop-by-hop and private headers
//! removed, and a stream folded into one JSON body when one was asked for.
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::body::RelayBody;
use crate::errors::RelayError;
use crate::meter::Meter;
use crate::tap::{Decoder, Observed, UsageFormat, UsageTap};

/// Largest folded stream, as for any JSON body.
const MAX_FOLDED: usize = 64 << 20;

/// A stream answered to a client that asked for one JSON body: read it all,
/// meter it, and answer with the final `response` object.
pub async fn fold_stream(
    head: http::response::Parts,
    first: Option<Bytes>,
    body: Incoming,
    meter: Meter,
    timeout: Duration,
    request_id: &HeaderValue,
) -> Result<Response<RelayBody>, RelayError> {
    let rest = tokio::time::timeout(timeout, Limited::new(body, MAX_FOLDED).collect()).await;
    let rest = match rest {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) | Err(_) => {
            meter.finish(&Observed::default(), false);
            return Err(RelayError::upstream(
                "upstream stream failed before it completed",
            ));
        }
    };
    let mut raw = first.map(|b| b.to_vec()).unwrap_or_default();
    raw.extend_from_slice(&rest);
    let encoding = head
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let bytes = match Decoder::detect(encoding, &raw) {
        Some(d) => match d.decode_all(&raw, MAX_FOLDED) {
            Ok(bytes) => bytes,
            Err(e) => {
                let mut meter = meter;
                meter.error_class = e.class().into();
                meter.finish(&Observed::default(), false);
                return Err(RelayError::new(
                    StatusCode::BAD_GATEWAY,
                    e.class(),
                    format!("upstream body could not be decoded: {e}"),
                ));
            }
        },
        None => Bytes::from(raw),
    };
    let mut tap = UsageTap::new(UsageFormat::OpenAiResponses, Some("text/event-stream"));
    tap.feed(&bytes);
    tap.finish();
    let terminal = terminal_response(&bytes);
    meter.finish(tap.observed(), true);
    let response =
        terminal.ok_or_else(|| RelayError::upstream("upstream stream ended without a response"))?;
    Ok(crate::answer::json(StatusCode::OK, &response, request_id).map(RelayBody::full))
}

/// The `response` object of the last terminal Responses event in `sse`.
fn terminal_response(sse: &[u8]) -> Option<Value> {
    let mut last = None;
    crate::tap::for_each_event(sse, |data| {
        // Only terminal events are parsed; a `\u` escape can spell any type.
        let find = |needle: &[u8]| memchr::memmem::find(data, needle).is_some();
        let maybe_terminal = find(b"\\u")
            || find(b"response.completed")
            || find(b"response.incomplete")
            || find(b"response.failed");
        if maybe_terminal
            && let Ok(mut event) = serde_json::from_slice::<Value>(data)
            && matches!(
                event.get("type").and_then(Value::as_str),
                Some("response.completed" | "response.incomplete" | "response.failed")
            )
            && let Some(response) = event.get_mut("response")
        {
            last = Some(response.take());
        }
    });
    last
}

/// Removes hop-by-hop headers (and those `connection` names), lengths
/// that no longer hold, and upstream details clients must not see.
pub fn strip_response_headers(headers: &mut HeaderMap, decoded: bool) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &STRIPPED {
        headers.remove(name);
    }
    if decoded {
        headers.remove(header::CONTENT_ENCODING);
    }
    if headers.keys().any(|n| n.as_str().starts_with("cf-")) {
        let cf: Vec<HeaderName> = headers
            .keys()
            .filter(|n| n.as_str().starts_with("cf-"))
            .cloned()
            .collect();
        for name in cf {
            headers.remove(name);
        }
    }
}

/// Hop-by-hop headers, lengths that may no longer hold, and upstream
/// details clients must not see.
static STRIPPED: [HeaderName; 13] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::CONTENT_LENGTH,
    header::SET_COOKIE,
    HeaderName::from_static("anthropic-organization-id"),
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    header::ALT_SVC,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_headers_are_cleaned() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("content-length", "10"),
            ("content-encoding", "gzip"),
            ("set-cookie", "__cf_bm=1"),
            ("cf-ray", "abc"),
            ("request-id", "req_1"),
            ("anthropic-organization-id", "org"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_response_headers(&mut h, true);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["request-id"]);
    }

    #[test]
    fn folded_streams_answer_with_the_terminal_response() {
        let sse = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"status\":\"in_progress\"}}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"status\":\"completed\"}}\n\n";
        assert_eq!(terminal_response(sse).unwrap()["status"], "completed");
        assert!(terminal_response(b"data: {\"type\":\"response.created\"}\n").is_none());
    }
}
