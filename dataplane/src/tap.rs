//! Reading usage out of response bytes as they pass, and undoing compression.
use std::io::Write;

use aiproxy_shared::pricing::TokenUsage;
use bytes::Bytes;
use serde_json::Value;

/// Longest SSE line kept for parsing; longer lines (big content deltas) are skipped.
const MAX_LINE: usize = 1 << 20;
/// Largest JSON body kept for parsing usage.
const MAX_JSON: usize = 16 << 20;

/// What the tap learned from a response.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Observed {
    pub usage: TokenUsage,
    /// The model the upstream says it used.
    pub model: Option<String>,
    /// Any usage was seen.
    pub usage_seen: bool,
    /// The response reached its natural end (`message_stop` / a complete JSON body).
    pub complete: bool,
    /// `error.type` of an error event or body.
    pub error: Option<String>,
}

impl Observed {
    /// Anthropic usage object; counts are cumulative, so keep the largest.
    fn apply_anthropic_usage(&mut self, u: &Value) {
        let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let mut seen = false;
        let mut take = |slot: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                seen = true;
                *slot = (*slot).max(v);
            }
        };
        take(&mut self.usage.input, get(u, "input_tokens"));
        take(&mut self.usage.output, get(u, "output_tokens"));
        take(
            &mut self.usage.cache_creation,
            get(u, "cache_creation_input_tokens"),
        );
        take(
            &mut self.usage.cache_read,
            get(u, "cache_read_input_tokens"),
        );
        if let Some(cc) = u.get("cache_creation") {
            take(
                &mut self.usage.cache_creation_1h,
                get(cc, "ephemeral_1h_input_tokens"),
            );
        }
        self.usage_seen |= seen;
    }

    fn apply_anthropic_event(&mut self, event: &Value) {
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(msg) = event.get("message") {
                    if let Some(m) = msg.get("model").and_then(Value::as_str) {
                        self.model = Some(m.to_string());
                    }
                    if let Some(u) = msg.get("usage") {
                        self.apply_anthropic_usage(u);
                    }
                }
            }
            Some("message_delta") => {
                if let Some(u) = event.get("usage") {
                    self.apply_anthropic_usage(u);
                }
            }
            Some("message_stop") => self.complete = true,
            Some("error") => {
                let kind = event
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                self.error = Some(kind.to_string());
            }
            _ => {}
        }
    }

    /// A complete non-streaming Anthropic body.
    fn apply_anthropic_body(&mut self, body: &Value) {
        if body.get("type").and_then(Value::as_str) == Some("error") {
            let kind = body
                .pointer("/error/type")
                .and_then(Value::as_str)
                .unwrap_or("error");
            self.error = Some(kind.to_string());
            return;
        }
        if let Some(m) = body.get("model").and_then(Value::as_str) {
            self.model = Some(m.to_string());
        }
        if let Some(u) = body.get("usage") {
            self.apply_anthropic_usage(u);
        }
        self.complete = true;
    }
}

/// Parses a response's bytes for usage without holding them back.
#[derive(Debug)]
pub enum UsageTap {
    /// Server-sent events, parsed line by line.
    Sse {
        line: Vec<u8>,
        skipping: bool,
        observed: Observed,
    },
    /// A JSON body, parsed once complete.
    Json {
        body: Vec<u8>,
        overflow: bool,
        observed: Observed,
    },
    /// Anything else: passed through, nothing learned.
    Opaque { observed: Observed },
}

impl UsageTap {
    pub fn for_content_type(content_type: Option<&str>) -> UsageTap {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        if ct.starts_with("text/event-stream") {
            UsageTap::Sse {
                line: Vec::new(),
                skipping: false,
                observed: Observed::default(),
            }
        } else if ct.contains("json") {
            UsageTap::Json {
                body: Vec::new(),
                overflow: false,
                observed: Observed::default(),
            }
        } else {
            UsageTap::Opaque {
                observed: Observed::default(),
            }
        }
    }

    pub fn is_sse(&self) -> bool {
        matches!(self, UsageTap::Sse { .. })
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self {
            UsageTap::Sse {
                line,
                skipping,
                observed,
            } => {
                let mut rest = chunk;
                while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
                    if !*skipping {
                        line.extend_from_slice(&rest[..pos]);
                        sse_line(line, observed);
                    }
                    line.clear();
                    *skipping = false;
                    rest = &rest[pos + 1..];
                }
                if !*skipping {
                    line.extend_from_slice(rest);
                    if line.len() > MAX_LINE {
                        line.clear();
                        *skipping = true;
                    }
                }
            }
            UsageTap::Json { body, overflow, .. } => {
                if !*overflow {
                    if body.len() + chunk.len() > MAX_JSON {
                        *overflow = true;
                        body.clear();
                    } else {
                        body.extend_from_slice(chunk);
                    }
                }
            }
            UsageTap::Opaque { .. } => {}
        }
    }

    /// Called at the natural end of the body.
    pub fn finish(&mut self) {
        match self {
            UsageTap::Sse { line, observed, .. } => {
                if !line.is_empty() {
                    sse_line(line, observed);
                    line.clear();
                }
            }
            UsageTap::Json {
                body,
                overflow,
                observed,
            } => {
                if !*overflow && let Ok(v) = serde_json::from_slice::<Value>(body) {
                    observed.apply_anthropic_body(&v);
                }
                body.clear();
            }
            UsageTap::Opaque { observed } => observed.complete = true,
        }
    }

    pub fn observed(&self) -> &Observed {
        match self {
            UsageTap::Sse { observed, .. }
            | UsageTap::Json { observed, .. }
            | UsageTap::Opaque { observed } => observed,
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One complete SSE line; only `data:` lines that can carry usage, a
/// model, the end or an error are parsed as JSON.
fn sse_line(line: &[u8], observed: &mut Observed) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    let interesting = contains(data, b"\"usage\"")
        || contains(data, b"message_st")
        || contains(data, b"\"error\"");
    if !interesting {
        return;
    }
    // JSON parsing validates UTF-8 per complete line, so a multi-byte
    // character split across chunks is never decoded half.
    if let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) {
        observed.apply_anthropic_event(&v);
    }
}

/// Streaming decompression of a body that arrived compressed.
pub enum Decoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
}

impl Decoder {
    /// From `content-encoding`, or from the gzip magic bytes when the header is missing.
    pub fn detect(content_encoding: Option<&str>, first_bytes: &[u8]) -> Option<Decoder> {
        match content_encoding
            .map(|s| s.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("gzip") | Some("x-gzip") => {
                Some(Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())))
            }
            Some("deflate") => Some(Decoder::Deflate(
                flate2::write::ZlibDecoder::new(Vec::new()),
            )),
            _ if first_bytes.starts_with(&[0x1f, 0x8b]) => {
                Some(Decoder::Gzip(flate2::write::GzDecoder::new(Vec::new())))
            }
            _ => None,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> std::io::Result<Bytes> {
        let out = match self {
            Decoder::Gzip(d) => {
                d.write_all(chunk)?;
                d.flush()?;
                std::mem::take(d.get_mut())
            }
            Decoder::Deflate(d) => {
                d.write_all(chunk)?;
                d.flush()?;
                std::mem::take(d.get_mut())
            }
        };
        Ok(Bytes::from(out))
    }

    pub fn finish(self) -> std::io::Result<Bytes> {
        let out = match self {
            Decoder::Gzip(d) => d.finish()?,
            Decoder::Deflate(d) => d.finish()?,
        };
        Ok(Bytes::from(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5-20250929\",\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"cache_creation\":{\"ephemeral_5m_input_tokens\":40,\"ephemeral_1h_input_tokens\":60},\"output_tokens\":1}}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"h\u{e9}llo \u{4e16}\u{754c}\"}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn expected() -> TokenUsage {
        TokenUsage {
            input: 25,
            output: 15,
            cache_creation: 100,
            cache_creation_1h: 60,
            cache_read: 2000,
        }
    }

    #[test]
    fn sse_usage_in_any_chunking() {
        let bytes = STREAM.as_bytes();
        for size in [1, 2, 3, 7, 64, bytes.len()] {
            let mut tap = UsageTap::for_content_type(Some("text/event-stream; charset=utf-8"));
            for chunk in bytes.chunks(size) {
                tap.feed(chunk);
            }
            tap.finish();
            let o = tap.observed();
            assert_eq!(o.usage, expected(), "chunk size {size}");
            assert!(o.complete);
            assert_eq!(o.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        }
    }

    #[test]
    fn zero_in_message_start_takes_the_delta_counts() {
        let s = "data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}\n\
data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":30,\"output_tokens\":9,\"cache_read_input_tokens\":4}}\n";
        let mut tap = UsageTap::for_content_type(Some("text/event-stream"));
        tap.feed(s.as_bytes());
        assert_eq!(
            tap.observed().usage,
            TokenUsage {
                input: 30,
                output: 9,
                cache_read: 4,
                ..Default::default()
            }
        );
        assert!(!tap.observed().complete);
    }

    #[test]
    fn error_event_after_200_is_seen() {
        let mut tap = UsageTap::for_content_type(Some("text/event-stream"));
        tap.feed(b"event: error\r\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\r\n\r\n");
        assert_eq!(tap.observed().error.as_deref(), Some("overloaded_error"));
    }

    #[test]
    fn json_body_usage() {
        let body = br#"{"id":"msg_1","type":"message","model":"claude-haiku-4-5","content":[],"usage":{"input_tokens":12,"output_tokens":3,"cache_creation_input_tokens":0,"cache_read_input_tokens":5}}"#;
        let mut tap = UsageTap::for_content_type(Some("application/json"));
        let (a, b) = body.split_at(40);
        tap.feed(a);
        tap.feed(b);
        tap.finish();
        let o = tap.observed();
        assert_eq!(
            o.usage,
            TokenUsage {
                input: 12,
                output: 3,
                cache_read: 5,
                ..Default::default()
            }
        );
        assert_eq!(o.model.as_deref(), Some("claude-haiku-4-5"));
        assert!(o.complete);
    }

    #[test]
    fn gzip_without_header_is_detected_and_decoded_in_pieces() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(STREAM.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        let mut decoder = Decoder::detect(None, &gz[..2]).expect("magic bytes detected");
        let mut out = Vec::new();
        for chunk in gz.chunks(10) {
            out.extend_from_slice(&decoder.feed(chunk).unwrap());
        }
        out.extend_from_slice(&decoder.finish().unwrap());
        assert_eq!(out, STREAM.as_bytes());
        assert!(Decoder::detect(None, b"data").is_none());
        assert!(Decoder::detect(Some("gzip"), b"").is_some());
    }
}
