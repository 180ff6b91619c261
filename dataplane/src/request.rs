//! The client's request as the relay reads it: the body (bounded), its model,
//! stream flag and session, and the one rewrite billing needs.
use aiproxy_shared::http::json_bytes;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use crate::admission::{BodyBudget, BodyBytes};
use crate::errors::RelayError;
use aiproxy_shared::domain::FilterMode;

use crate::filter::{self, Policy};
use crate::routes::Endpoint;
use crate::session::{self, Format, RequestHead, Session};

/// What the relay learned from the request.
pub struct Parsed {
    pub model: String,
    pub stream: bool,
    pub body: Bytes,
    pub session: Option<Session>,
}

fn format(endpoint: &Endpoint) -> Format {
    match endpoint {
        Endpoint::AnthropicMessages | Endpoint::AnthropicCountTokens => Format::Anthropic,
        Endpoint::OpenAiChat => Format::OpenAiChat,
        Endpoint::OpenAiResponses => Format::OpenAiResponses,
        Endpoint::GeminiGenerate { .. } | Endpoint::GeminiCountTokens { .. } => Format::Gemini,
    }
}

/// Reads the model, stream flag and session; for a streamed chat completion
/// asks the upstream to report usage (`stream_options.include_usage`) so
/// the stream can be billed. The body is parsed once.
pub fn parse(
    endpoint: &Endpoint,
    headers: &HeaderMap,
    body: Bytes,
    filter: &Policy,
) -> Result<Parsed, RelayError> {
    let invalid = |e: serde_json::Error| RelayError::bad_request(format!("invalid JSON body: {e}"));
    let head = RequestHead::parse(&body).map_err(invalid)?;
    if filter.mode != FilterMode::Off {
        let messages_path = *endpoint == Endpoint::AnthropicMessages;
        if let Err(refusal) = filter::check(filter, headers, messages_path, &head) {
            tracing::info!(reason = %refusal, "client not allowed");
            return Err(RelayError::client_not_allowed(refusal.reason()));
        }
    }
    let session = session::session(format(endpoint), headers, &head);
    let (model, stream) = match endpoint {
        Endpoint::GeminiGenerate { model, stream } => (model.clone(), *stream),
        Endpoint::GeminiCountTokens { model } => (model.clone(), false),
        _ => {
            let model = head
                .model
                .as_deref()
                .filter(|m| !m.is_empty())
                .ok_or_else(|| RelayError::bad_request("model is required"))?
                .to_string();
            (model, head.stream)
        }
    };
    let add_usage =
        *endpoint == Endpoint::OpenAiChat && stream && head.include_usage() != Some(true);
    drop(head);
    let body = if add_usage {
        let mut v: Value = serde_json::from_slice(&body).map_err(invalid)?;
        v["stream_options"] = serde_json::json!({ "include_usage": true });
        json_bytes(&v)
    } else {
        body
    };
    Ok(Parsed {
        model,
        stream,
        body,
        session,
    })
}

/// Reads the request body: at most `max` bytes (else 413, at once when the
/// declared length says so), within `timeout` (else 408), each byte taken
/// from the node's `budget` as it arrives (else 503). `held` keeps the
/// bytes counted until the request is done.
pub async fn read_body(
    body: Incoming,
    headers: &HeaderMap,
    max: usize,
    budget: &BodyBudget,
    held: &mut BodyBytes,
    timeout: Duration,
) -> Result<Bytes, RelayError> {
    let too_large = || {
        RelayError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    // Bytes are taken from the budget as they arrive: a client that
    // declares much and sends little holds only what it sent.
    let read = async {
        let mut body = body;
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut len = 0;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|_| RelayError::bad_request("could not read the request body"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if len + data.len() > max {
                return Err(too_large());
            }
            budget.take(held, data.len())?;
            len += data.len();
            chunks.push(data);
        }
        Ok(match chunks.len() {
            0 | 1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut whole = BytesMut::with_capacity(len);
                for chunk in chunks {
                    whole.extend_from_slice(&chunk);
                }
                whole.freeze()
            }
        })
    };
    // Most bodies are in by now: only one still arriving takes a timer.
    let mut read = std::pin::pin!(read);
    let first = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    if let Poll::Ready(done) = first {
        return done;
    }
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        RelayError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("request body not received within {} s", timeout.as_secs()),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_body(endpoint: &Endpoint, body: &'static [u8]) -> Result<Parsed, RelayError> {
        parse(
            endpoint,
            &HeaderMap::new(),
            Bytes::from_static(body),
            &Policy::off(),
        )
    }

    #[test]
    fn streamed_chat_completions_ask_for_usage() {
        let parsed = parse_body(
            &Endpoint::OpenAiChat,
            br#"{"model":"gpt-4o","stream":true,"messages":[]}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&parsed.body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "gpt-4o");
        // A client that asked already, and non-streamed requests, go as sent.
        let asked: &[u8] =
            br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#;
        assert_eq!(
            parse_body(&Endpoint::OpenAiChat, asked).unwrap().body,
            asked
        );
        let plain: &[u8] = br#"{"model":"gpt-4o","messages":[]}"#;
        assert_eq!(
            parse_body(&Endpoint::OpenAiChat, plain).unwrap().body,
            plain
        );
    }

    #[test]
    fn bad_bodies_are_400s() {
        for (endpoint, body) in [
            (Endpoint::AnthropicMessages, &b"{not json"[..]),
            (Endpoint::AnthropicMessages, b"[1,2]"),
            (Endpoint::OpenAiChat, b"{\"messages\":[]}"),
            (
                Endpoint::GeminiGenerate {
                    model: "m".into(),
                    stream: false,
                },
                b"\"text\"",
            ),
        ] {
            let err = parse_body(&endpoint, body).err().expect("rejected");
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
        }
        let gemini = parse_body(
            &Endpoint::GeminiGenerate {
                model: "gemini-2.5-pro".into(),
                stream: true,
            },
            b"{}",
        )
        .unwrap();
        assert_eq!(
            (gemini.model.as_str(), gemini.stream),
            ("gemini-2.5-pro", true)
        );
    }

    #[test]
    fn claude_code_sessions_are_read() {
        let body: &[u8] = br#"{"model":"claude-sonnet-4-5","metadata":{"user_id":"{\"device_id\":\"d\",\"account_uuid\":\"a\",\"session_id\":\"0b7c1e52-7d1f-4a39-9a57-3c0e2f6a1d11\"}"},"messages":[]}"#;
        let a = parse_body(&Endpoint::AnthropicMessages, body).unwrap();
        let b = parse_body(&Endpoint::AnthropicMessages, body).unwrap();
        let session = a.session.expect("a session");
        assert_eq!(session.source, "claude_code");
        assert_eq!(Some(session), b.session);
    }

    mod spellings {
        //! Any valid spelling of a request body reads the same: model,
        //! stream flag, session, and the usage request added to a stream.
        use proptest::prelude::*;
        use serde_json::{Value, json};

        use super::*;
        use crate::spelling::{Dice, spell};

        fn text(dice: &mut Dice) -> String {
            let pieces = [
                "Hello",
                " ",
                "\"quoted\"",
                "\\",
                "\n",
                "世界",
                "é",
                "🦀",
                "/",
                "{\"model\":\"x\"}",
            ];
            // Never blank: a blank prompt opens no session.
            let mut t = String::from("prompt ");
            t.extend((0..dice.below(5) + 1).map(|_| *dice.pick(&pieces)));
            t
        }

        /// An endpoint and a body for it, as a client of that API sends it.
        fn request(kind: usize, model: &str, stream: bool, dice: &mut Dice) -> (Endpoint, Value) {
            let (system, message) = (text(dice), text(dice));
            match kind {
                0 => {
                    let user_id = json!({"device_id": "d1", "account_uuid": "a1",
                        "session_id": "5d0e7f0a-2d7b-4b0e-9d55-1f0e6a3b9c21"})
                    .to_string();
                    (
                        Endpoint::AnthropicMessages,
                        json!({"model": model, "max_tokens": 1024, "stream": stream,
                            "metadata": {"user_id": user_id},
                            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
                            "messages": [{"role": "user", "content": [{"type": "text", "text": message}]}]}),
                    )
                }
                1 => (
                    Endpoint::AnthropicMessages,
                    json!({"model": model, "max_tokens": 64, "stream": stream, "system": system,
                        "messages": [{"role": "user", "content": message}]}),
                ),
                2 => (
                    Endpoint::OpenAiChat,
                    json!({"model": model, "stream": stream, "n": 1,
                        "messages": [{"role": "system", "content": system}, {"role": "user", "content": message}]}),
                ),
                3 => (
                    Endpoint::OpenAiResponses,
                    json!({"model": model, "stream": stream, "instructions": system, "store": false,
                        "input": [{"role": "user", "content": [{"type": "input_text", "text": message}]}]}),
                ),
                _ => (
                    Endpoint::GeminiGenerate {
                        model: model.to_string(),
                        stream,
                    },
                    json!({"systemInstruction": {"parts": [{"text": system}]},
                        "contents": [{"role": "user", "parts": [{"text": message}]}],
                        "generationConfig": {"maxOutputTokens": 256}}),
                ),
            }
        }

        /// Equal as JSON values: numbers by value (`1024.0` is `1024`).
        fn same(a: &Value, b: &Value) -> bool {
            match (a, b) {
                (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
                (Value::Array(x), Value::Array(y)) => {
                    x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
                }
                (Value::Object(x), Value::Object(y)) => {
                    x.len() == y.len()
                        && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
                }
                _ => a == b,
            }
        }

        fn read(endpoint: &Endpoint, body: &str) -> (String, bool, Option<Session>, Value) {
            let parsed = parse(
                endpoint,
                &HeaderMap::new(),
                Bytes::from(body.to_string()),
                &Policy::off(),
            )
            .unwrap_or_else(|e| panic!("{}: {body}", e.message));
            let sent: Value = serde_json::from_slice(&parsed.body).unwrap();
            (parsed.model, parsed.stream, parsed.session, sent)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

            #[test]
            fn any_spelling_of_a_request_reads_the_same(
                kind in 0usize..5,
                model in "[a-z][a-z0-9.-]{0,30}",
                stream in any::<bool>(),
                seed in 1..u64::MAX,
            ) {
                let mut dice = Dice(seed);
                let (endpoint, body) = request(kind, &model, stream, &mut dice);
                let canonical = read(&endpoint, &body.to_string());
                let mut spelled = String::new();
                if dice.chance(30) {
                    spelled.push_str(" \r\n\t");
                }
                spell(&body, &mut dice, &mut spelled);
                let read_back = read(&endpoint, &spelled);
                prop_assert_eq!(&read_back.0, &model);
                prop_assert_eq!(read_back.1, stream);
                prop_assert!(canonical.2.is_some(), "no session for {}", body);
                prop_assert_eq!(&read_back.2, &canonical.2, "{}", spelled);
                // What goes upstream means the same, with the usage request
                // added to a streamed chat completion however it was spelled.
                prop_assert!(same(&read_back.3, &canonical.3), "{} vs {}", read_back.3, canonical.3);
                if endpoint == Endpoint::OpenAiChat && stream {
                    prop_assert_eq!(&read_back.3["stream_options"]["include_usage"], &json!(true));
                }
            }
        }
    }
}
