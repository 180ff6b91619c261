//! Reading usage out of response bytes as they pass, per API dialect.
use aiproxy_shared::pricing::TokenUsage;

mod decode;
mod fields;

use fields::{Cached, Count, Counts, Error, GeminiCounts, Message, Object, Text};

pub use decode::{Decoder, Unwrapper};

/// Longest SSE line kept for parsing; longer lines (big content deltas) are
/// skipped. Terminal Responses events repeat the whole output, so this is generous.
const MAX_LINE: usize = 16 << 20;
/// Largest JSON body kept for parsing usage.
const MAX_JSON: usize = 16 << 20;

/// The response dialect a tap reads usage from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageFormat {
    Anthropic,
    OpenAiChat,
    OpenAiResponses,
    /// Gemini, plain or wrapped in Code Assist's `{"response": …}`.
    Gemini,
}

/// What the tap learned from a response.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Observed {
    pub usage: TokenUsage,
    /// The model the upstream says it used.
    pub model: Option<String>,
    /// Any usage was seen.
    pub usage_seen: bool,
    /// The response reached its natural end (a terminal event or a complete body).
    pub complete: bool,
    /// `error.type` (or status) of an error event or body.
    pub error: Option<String>,
    /// A Responses `id`, which a later `previous_response_id` names.
    pub response_id: Option<String>,
}

impl Observed {
    fn set_model(&mut self, model: &Text<'_>) {
        if let Some(m) = &model.0 {
            self.model = Some(m.to_string());
        }
    }

    fn set_response_id(&mut self, id: &Text<'_>) {
        if let Some(id) = id.0.as_deref().filter(|id| !id.is_empty()) {
            self.response_id = Some(id.to_string());
        }
    }

    /// Anthropic counts are cumulative and may arrive in pieces: keep the largest.
    fn anthropic_usage(&mut self, u: &Counts) {
        let mut seen = false;
        let mut take = |slot: &mut u64, v: Count| {
            if let Some(v) = v.0 {
                seen = true;
                *slot = (*slot).max(v);
            }
        };
        take(&mut self.usage.input, u.input_tokens);
        take(&mut self.usage.output, u.output_tokens);
        take(
            &mut self.usage.cache_creation,
            u.cache_creation_input_tokens,
        );
        take(&mut self.usage.cache_read, u.cache_read_input_tokens);
        if let Some(c) = u.cache_creation.get() {
            take(
                &mut self.usage.cache_creation_1h,
                c.ephemeral_1h_input_tokens,
            );
        }
        self.usage_seen |= seen;
    }

    /// OpenAI counts include cached tokens in the prompt; store them apart.
    fn openai_usage(&mut self, input: Count, output: Count, details: &Object<Cached>) {
        let (Some(prompt), Some(completion)) = (input.0, output.0) else {
            return;
        };
        let cached = details
            .get()
            .and_then(|d| d.cached_tokens.0)
            .unwrap_or(0)
            .min(prompt);
        self.usage = TokenUsage {
            input: prompt - cached,
            output: completion,
            cache_read: cached,
            ..TokenUsage::default()
        };
        self.usage_seen = true;
    }

    fn chat_usage(&mut self, u: &Counts) {
        self.openai_usage(
            u.prompt_tokens,
            u.completion_tokens,
            &u.prompt_tokens_details,
        );
    }

    fn responses_usage(&mut self, u: &Counts) {
        self.openai_usage(u.input_tokens, u.output_tokens, &u.input_tokens_details);
    }

    /// Gemini: thoughts are billed as output; cached content is inside the prompt count.
    fn gemini_usage(&mut self, u: &GeminiCounts) {
        let count = |c: Count| c.0.unwrap_or(0);
        let prompt = count(u.prompt_token_count) + count(u.tool_use_prompt_token_count);
        let cached = count(u.cached_content_token_count).min(prompt);
        let output = count(u.candidates_token_count) + count(u.thoughts_token_count);
        self.usage = TokenUsage {
            input: prompt - cached,
            output,
            cache_read: cached,
            ..TokenUsage::default()
        };
        self.usage_seen = true;
    }

    /// One streamed event (the JSON of a `data:` line).
    fn apply_event(&mut self, format: UsageFormat, event: &Message<'_>) {
        match format {
            UsageFormat::Anthropic => match event.kind.0.as_deref() {
                Some("message_start") => {
                    if let Some(message) = event.message.get() {
                        self.set_model(&message.model);
                        if let Some(u) = message.usage.get() {
                            self.anthropic_usage(u);
                        }
                    }
                }
                Some("message_delta") => {
                    if let Some(u) = event.usage.get() {
                        self.anthropic_usage(u);
                    }
                }
                Some("message_stop") => self.complete = true,
                Some("error") => {
                    self.error = Some(event.error.as_ref().map_or("error".into(), Error::kind))
                }
                _ => {}
            },
            UsageFormat::OpenAiChat => {
                if let Some(error) = &event.error {
                    self.error = Some(error.kind());
                    return;
                }
                self.set_model(&event.model);
                if let Some(u) = event.usage.get() {
                    self.chat_usage(u);
                }
            }
            UsageFormat::OpenAiResponses => match event.kind.0.as_deref() {
                Some("response.created") | Some("response.in_progress") => {
                    if let Some(response) = event.response.get() {
                        self.set_model(&response.model);
                        self.set_response_id(&response.id);
                    }
                }
                Some(kind @ ("response.completed" | "response.incomplete" | "response.failed")) => {
                    if let Some(response) = event.response.get() {
                        self.set_model(&response.model);
                        self.set_response_id(&response.id);
                        if let Some(u) = response.usage.get() {
                            self.responses_usage(u);
                        }
                    }
                    if kind == "response.failed" {
                        let code = event
                            .response
                            .get()
                            .and_then(|r| match &r.error {
                                Some(Error::Object(e)) => e.code.0.clone(),
                                _ => None,
                            })
                            .unwrap_or_else(|| "response_failed".into());
                        self.error = Some(code);
                    }
                    self.complete = true;
                }
                // The event is the error: `{"type":"error","code":…,"message":…}`.
                Some("error") => {
                    self.error = Some(event.code.0.clone().unwrap_or_else(|| "error".into()))
                }
                _ => {}
            },
            UsageFormat::Gemini => {
                let inner = event.response.get().map_or(event, |r| &**r);
                if let Some(error) = &inner.error {
                    self.error = Some(error.kind());
                    return;
                }
                self.set_model(&inner.model_version);
                if let Some(u) = inner.usage_metadata.get() {
                    self.gemini_usage(u);
                }
            }
        }
    }

    /// A complete, non-streamed body.
    fn apply_body(&mut self, format: UsageFormat, body: &Message<'_>) {
        let inner = match format {
            UsageFormat::Gemini => body.response.get().map_or(body, |r| &**r),
            _ => body,
        };
        if inner.error.as_ref().is_some_and(Error::is_object)
            || inner.kind.0.as_deref() == Some("error")
        {
            self.error = Some(inner.error.as_ref().map_or("error".into(), Error::kind));
            return;
        }
        match format {
            UsageFormat::Anthropic => {
                self.set_model(&inner.model);
                if let Some(u) = inner.usage.get() {
                    self.anthropic_usage(u);
                }
            }
            UsageFormat::OpenAiChat => {
                self.set_model(&inner.model);
                if let Some(u) = inner.usage.get() {
                    self.chat_usage(u);
                }
            }
            UsageFormat::OpenAiResponses => {
                self.set_model(&inner.model);
                self.set_response_id(&inner.id);
                if let Some(u) = inner.usage.get() {
                    self.responses_usage(u);
                }
            }
            UsageFormat::Gemini => {
                self.set_model(&inner.model_version);
                if let Some(u) = inner.usage_metadata.get() {
                    self.gemini_usage(u);
                }
            }
        }
        self.complete = true;
    }
}

/// Parses a response's bytes for usage without holding them back.
#[derive(Debug)]
pub struct UsageTap {
    format: UsageFormat,
    mode: Mode,
    observed: Observed,
}

#[derive(Debug)]
enum Mode {
    /// Server-sent events, parsed line by line.
    Sse { line: Vec<u8>, skipping: bool },
    /// A JSON body, parsed once complete.
    Json { body: Vec<u8>, overflow: bool },
    /// Anything else: passed through, nothing learned.
    Opaque,
}

impl UsageTap {
    pub fn new(format: UsageFormat, content_type: Option<&str>) -> UsageTap {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let mode = if ct.starts_with("text/event-stream") {
            Mode::Sse {
                line: Vec::new(),
                skipping: false,
            }
        } else if ct.contains("json") {
            Mode::Json {
                body: Vec::new(),
                overflow: false,
            }
        } else {
            Mode::Opaque
        };
        UsageTap {
            format,
            mode,
            observed: Observed::default(),
        }
    }

    pub fn is_sse(&self) -> bool {
        matches!(self.mode, Mode::Sse { .. })
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            Mode::Sse { line, skipping } => {
                let mut rest = chunk;
                while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
                    if !*skipping {
                        line.extend_from_slice(&rest[..pos]);
                        sse_line(self.format, line, &mut self.observed);
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
            Mode::Json { body, overflow } => {
                if !*overflow {
                    if body.len() + chunk.len() > MAX_JSON {
                        *overflow = true;
                        body.clear();
                    } else {
                        body.extend_from_slice(chunk);
                    }
                }
            }
            Mode::Opaque => {}
        }
    }

    /// Called at the natural end of the body.
    pub fn finish(&mut self) {
        match &mut self.mode {
            Mode::Sse { line, .. } => {
                if !line.is_empty() {
                    sse_line(self.format, line, &mut self.observed);
                    line.clear();
                }
                // Gemini streams have no terminal event: the end is the end.
                if self.format == UsageFormat::Gemini {
                    self.observed.complete = true;
                }
            }
            Mode::Json { body, overflow } => {
                if !*overflow && let Some(m) = Message::parse(body) {
                    self.observed.apply_body(self.format, &m);
                }
                body.clear();
            }
            Mode::Opaque => self.observed.complete = true,
        }
    }

    pub fn observed(&self) -> &Observed {
        &self.observed
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// One complete SSE line. Only `data:` lines that can carry usage, a model,
/// the end or an error are parsed as JSON; content deltas are not.
fn sse_line(format: UsageFormat, line: &[u8], observed: &mut Observed) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    let data = data.trim_ascii();
    if data == b"[DONE]" {
        observed.complete = true;
        return;
    }
    let interesting = match format {
        UsageFormat::Anthropic => {
            contains(data, b"\"usage\"")
                || contains(data, b"message_st")
                || contains(data, b"\"error\"")
        }
        UsageFormat::OpenAiChat => {
            contains(data, b"\"usage\":{")
                || contains(data, b"\"error\"")
                || (observed.model.is_none() && contains(data, b"\"model\""))
        }
        UsageFormat::OpenAiResponses => {
            contains(data, b"response.c")
                || contains(data, b"response.in")
                || contains(data, b"response.failed")
                || contains(data, b"\"error\"")
        }
        UsageFormat::Gemini => contains(data, b"usageMetadata") || contains(data, b"\"error\""),
    };
    if !interesting {
        return;
    }
    // JSON parsing validates UTF-8 per complete line, so a multi-byte
    // character split across chunks is never decoded half.
    if let Some(event) = Message::parse(data) {
        observed.apply_event(format, &event);
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
            let mut tap = UsageTap::new(
                UsageFormat::Anthropic,
                Some("text/event-stream; charset=utf-8"),
            );
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
        let mut tap = UsageTap::new(UsageFormat::Anthropic, Some("text/event-stream"));
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
        let mut tap = UsageTap::new(UsageFormat::Anthropic, Some("text/event-stream"));
        tap.feed(b"event: error\r\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\r\n\r\n");
        assert_eq!(tap.observed().error.as_deref(), Some("overloaded_error"));
    }

    #[test]
    fn json_body_usage() {
        let body = br#"{"id":"msg_1","type":"message","model":"claude-haiku-4-5","content":[],"usage":{"input_tokens":12,"output_tokens":3,"cache_creation_input_tokens":0,"cache_read_input_tokens":5}}"#;
        let mut tap = UsageTap::new(UsageFormat::Anthropic, Some("application/json"));
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

    fn run(format: UsageFormat, content_type: &str, body: &str) -> Observed {
        let mut tap = UsageTap::new(format, Some(content_type));
        for chunk in body.as_bytes().chunks(5) {
            tap.feed(chunk);
        }
        tap.finish();
        tap.observed().clone()
    }

    #[test]
    fn openai_chat_stream_usage_chunk() {
        let body = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-2024-08-06\",\"choices\":[],\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":7,\"total_tokens\":127,\"prompt_tokens_details\":{\"cached_tokens\":100},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n\
data: [DONE]\n\n";
        let o = run(UsageFormat::OpenAiChat, "text/event-stream", body);
        assert_eq!(
            o.usage,
            TokenUsage {
                input: 20,
                output: 7,
                cache_read: 100,
                ..Default::default()
            }
        );
        assert_eq!(o.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert!(o.complete);
    }

    #[test]
    fn openai_chat_body_usage() {
        let body = r#"{"id":"c","object":"chat.completion","model":"gpt-5","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":30,"completion_tokens_details":{"reasoning_tokens":20}}}"#;
        let o = run(UsageFormat::OpenAiChat, "application/json", body);
        assert_eq!(
            o.usage,
            TokenUsage {
                input: 10,
                output: 30,
                ..Default::default()
            }
        );
    }

    #[test]
    fn responses_terminal_event_usage() {
        let body = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"model\":\"gpt-5-codex\",\"usage\":null}}\n\n\
event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n\
event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"model\":\"gpt-5-codex\",\"usage\":{\"input_tokens\":500,\"input_tokens_details\":{\"cached_tokens\":300},\"output_tokens\":40,\"output_tokens_details\":{\"reasoning_tokens\":12},\"total_tokens\":540}}}\n\n";
        let o = run(UsageFormat::OpenAiResponses, "text/event-stream", body);
        assert_eq!(o.response_id.as_deref(), Some("r"));
        assert_eq!(
            o.usage,
            TokenUsage {
                input: 200,
                output: 40,
                cache_read: 300,
                ..Default::default()
            }
        );
        assert_eq!(o.model.as_deref(), Some("gpt-5-codex"));
        assert!(o.complete);
    }

    #[test]
    fn gemini_stream_keeps_the_last_usage_and_bills_thoughts() {
        let body = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]}}],\"usageMetadata\":{\"promptTokenCount\":50,\"candidatesTokenCount\":1},\"modelVersion\":\"gemini-2.5-pro\"}\r\n\r\n\
data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"b\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":50,\"cachedContentTokenCount\":20,\"candidatesTokenCount\":9,\"thoughtsTokenCount\":30,\"totalTokenCount\":89},\"modelVersion\":\"gemini-2.5-pro\"}\r\n\r\n";
        let o = run(UsageFormat::Gemini, "text/event-stream", body);
        assert_eq!(
            o.usage,
            TokenUsage {
                input: 30,
                output: 39,
                cache_read: 20,
                ..Default::default()
            }
        );
        assert!(o.complete);
        // Code Assist wraps the same object in {"response": …}.
        let wrapped = r#"{"response":{"candidates":[],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":3},"modelVersion":"gemini-2.5-flash"}}"#;
        let o = run(UsageFormat::Gemini, "application/json", wrapped);
        assert_eq!(
            o.usage,
            TokenUsage {
                input: 7,
                output: 3,
                ..Default::default()
            }
        );
        assert_eq!(o.model.as_deref(), Some("gemini-2.5-flash"));
    }

    #[test]
    fn odd_members_read_as_absent_and_spare_the_rest() {
        let body = r#"{"model":"claude-\u0073onnet","usage":{"input_tokens":"12","output_tokens":7,"cache_read_input_tokens":-1,"cache_creation":[1,{"a":2}],"cache_creation_input_tokens":2.5},"content":[{"type":"text","text":"{\"usage\":1}"}],"message":"not an object","error":null}"#;
        let o = run(UsageFormat::Anthropic, "application/json", body);
        assert_eq!(o.model.as_deref(), Some("claude-sonnet"));
        assert_eq!(
            o.usage,
            TokenUsage {
                output: 7,
                ..Default::default()
            }
        );
        assert!(o.usage_seen && o.complete && o.error.is_none());
        for not_an_object in ["[1,2]", "\"text\"", "12", "null"] {
            let o = run(UsageFormat::Anthropic, "application/json", not_an_object);
            assert!(!o.usage_seen, "{not_an_object}");
        }
    }

    #[test]
    fn responses_errors_keep_their_codes() {
        let body = "data: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"slow down\",\"param\":null}\n\n";
        let o = run(UsageFormat::OpenAiResponses, "text/event-stream", body);
        assert_eq!(o.error.as_deref(), Some("rate_limit_exceeded"));
        let body = "data: {\"type\":\"response.failed\",\"response\":{\"id\":\"r2\",\"model\":\"gpt-5\",\"error\":{\"code\":\"server_error\",\"message\":\"x\"},\"usage\":null}}\n\n";
        let o = run(UsageFormat::OpenAiResponses, "text/event-stream", body);
        assert_eq!(o.error.as_deref(), Some("server_error"));
        assert_eq!(o.response_id.as_deref(), Some("r2"));
        assert!(o.complete && !o.usage_seen);
    }

    #[test]
    fn error_bodies_are_classified() {
        let o = run(
            UsageFormat::OpenAiChat,
            "application/json",
            r#"{"error":{"message":"slow down","type":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(o.error.as_deref(), Some("rate_limit_exceeded"));
        let o = run(
            UsageFormat::Gemini,
            "application/json",
            r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(o.error.as_deref(), Some("RESOURCE_EXHAUSTED"));
        assert!(!o.usage_seen);
    }
}
