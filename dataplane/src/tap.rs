//! Reading usage out of response bytes as they pass, per API dialect.
use aiproxy_shared::pricing::TokenUsage;

mod decode;
mod fields;
#[cfg(test)]
mod spellings;

use fields::{Cached, Count, Counts, Error, GeminiCounts, Message, Object, Text};

pub use decode::{DecodeError, Decoder, Unwrapper};

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
    /// The upstream's id for the answer, when the body names it (Gemini's
    /// `responseId`).
    pub upstream_id: Option<String>,
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
        let prompt =
            count(u.prompt_token_count).saturating_add(count(u.tool_use_prompt_token_count));
        let cached = count(u.cached_content_token_count).min(prompt);
        let output = count(u.candidates_token_count).saturating_add(count(u.thoughts_token_count));
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
                if self.upstream_id.is_none() {
                    self.upstream_id = inner.response_id.0.as_deref().map(str::to_string);
                }
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
                if self.upstream_id.is_none() {
                    self.upstream_id = inner.response_id.0.as_deref().map(str::to_string);
                }
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
    /// Server-sent events, assembled event by event.
    Sse(Events),
    /// A JSON body, parsed once complete.
    Json { body: Vec<u8>, overflow: bool },
    /// Anything else: passed through, nothing learned.
    Opaque,
}

/// Server-sent events as the specification reads them: lines end in LF, CR
/// or CRLF (split anywhere between chunks), `data` lines of one event are
/// joined with LF, a blank line ends the event, comments and other fields
/// are ignored.
#[derive(Debug, Default)]
struct Events {
    /// The line being read.
    line: Vec<u8>,
    /// The line is longer than `MAX_LINE`: the rest of it is dropped.
    skipping: bool,
    /// The last line ended with CR: an LF right after it ends nothing.
    after_cr: bool,
    /// No byte read yet: a byte-order mark may come first.
    at_start: bool,
    /// The `data` of the event being assembled.
    data: Vec<u8>,
    data_lines: usize,
}

impl Events {
    fn new() -> Self {
        Events {
            at_start: true,
            ..Events::default()
        }
    }

    /// Reads `chunk`, handing each complete event's data to `event`.
    fn feed(&mut self, mut chunk: &[u8], event: &mut impl FnMut(&[u8], usize)) {
        if self.at_start && !chunk.is_empty() {
            // A BOM can itself be split; wait for three bytes or a mismatch.
            self.line.extend_from_slice(chunk);
            if self.line.len() < BOM.len() && BOM.starts_with(&self.line) {
                return;
            }
            self.at_start = false;
            let pending = std::mem::take(&mut self.line);
            let rest = pending.strip_prefix(BOM).unwrap_or(&pending);
            return self.feed(rest, event);
        }
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', chunk) {
            if !self.skipping {
                self.line.extend_from_slice(&chunk[..pos]);
                let line = std::mem::take(&mut self.line);
                self.line_ended(&line, event);
                self.line = line;
            }
            self.line.clear();
            self.skipping = false;
            let crlf = chunk[pos] == b'\r';
            chunk = &chunk[pos + 1..];
            if crlf {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        if !self.skipping {
            self.line.extend_from_slice(chunk);
            if self.line.len() > MAX_LINE {
                self.line.clear();
                self.skipping = true;
            }
        }
    }

    fn line_ended(&mut self, line: &[u8], event: &mut impl FnMut(&[u8], usize)) {
        if line.is_empty() {
            self.dispatch(event);
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => return, // a comment
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        if field != b"data" {
            return;
        }
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if self.data.len() + value.len() > MAX_LINE {
            // Too big to keep; the event is dropped, not cut.
            self.data.clear();
            self.data_lines = usize::MAX;
            return;
        }
        if self.data_lines == usize::MAX {
            return;
        }
        if self.data_lines > 0 {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
        self.data_lines += 1;
    }

    fn dispatch(&mut self, event: &mut impl FnMut(&[u8], usize)) {
        if self.data_lines > 0 && self.data_lines != usize::MAX {
            event(&self.data, self.data_lines);
        }
        self.data.clear();
        self.data_lines = 0;
    }

    /// The end of the stream: a last event without its blank line still counts.
    fn finish(&mut self, event: &mut impl FnMut(&[u8], usize)) {
        if !self.skipping && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_ended(&line, event);
        }
        self.dispatch(event);
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Calls `event` with the data of every event of a whole SSE body.
pub fn for_each_event(sse: &[u8], mut event: impl FnMut(&[u8])) {
    let mut events = Events::new();
    let mut each = |data: &[u8], _lines: usize| event(data);
    events.feed(sse, &mut each);
    events.finish(&mut each);
}

impl UsageTap {
    pub fn new(format: UsageFormat, content_type: Option<&str>) -> UsageTap {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let mode = if ct.starts_with("text/event-stream") {
            Mode::Sse(Events::new())
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
        matches!(self.mode, Mode::Sse(_))
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        let (format, observed) = (self.format, &mut self.observed);
        match &mut self.mode {
            Mode::Sse(events) => events.feed(chunk, &mut |data, lines| {
                sse_event(format, data, lines, observed)
            }),
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
        let (format, observed) = (self.format, &mut self.observed);
        match &mut self.mode {
            Mode::Sse(events) => {
                events.finish(&mut |data, lines| sse_event(format, data, lines, observed));
                // Gemini streams have no terminal event: the end is the end.
                if format == UsageFormat::Gemini {
                    observed.complete = true;
                }
            }
            Mode::Json { body, overflow } => {
                if !*overflow {
                    json_body(format, body, observed);
                }
                body.clear();
            }
            Mode::Opaque => observed.complete = true,
        }
    }

    /// The body ended early (client gone, upstream cut): an event whose
    /// lines all arrived still counts, without marking the response complete.
    pub fn interrupt(&mut self) {
        let (format, observed) = (self.format, &mut self.observed);
        if let Mode::Sse(events) = &mut self.mode {
            events.dispatch(&mut |data, lines| sse_event(format, data, lines, observed));
        }
    }

    pub fn observed(&self) -> &Observed {
        &self.observed
    }
}

/// A whole JSON body: one object, or (Gemini's stream without `alt=sse`)
/// an array of the chunks a stream would have sent.
fn json_body(format: UsageFormat, body: &[u8], observed: &mut Observed) {
    let body = body.strip_prefix(BOM).unwrap_or(body);
    if let Some(m) = Message::parse(body) {
        observed.apply_body(format, &m);
    } else if format == UsageFormat::Gemini
        && let Some(chunks) = Message::parse_array(body)
    {
        for chunk in &chunks {
            observed.apply_event(format, chunk);
        }
        observed.complete = true;
    }
}

/// Whether `data` may hold any of `needles`. A `\u` escape can spell any
/// character of a key or a value, so data with one is always read.
fn may_hold(data: &[u8], needles: &[&[u8]]) -> bool {
    memchr::memmem::find(data, b"\\u").is_some()
        || needles
            .iter()
            .any(|n| memchr::memmem::find(data, n).is_some())
}

/// Whether some `"usage"` member holds an object (whatever the whitespace
/// around its colon): chat chunks carry `"usage": null` until the last.
fn usage_object(data: &[u8]) -> bool {
    memchr::memmem::find_iter(data, b"\"usage\"").any(|at| {
        let rest = data[at + 7..].trim_ascii_start();
        rest.strip_prefix(b":")
            .is_some_and(|v| v.trim_ascii_start().starts_with(b"{"))
    })
}

/// One event's data. Only events that can carry usage, a model, the end or
/// an error are parsed as JSON; content deltas are not.
fn sse_event(format: UsageFormat, data: &[u8], lines: usize, observed: &mut Observed) {
    let data = data.trim_ascii();
    if data == b"[DONE]" {
        observed.complete = true;
        return;
    }
    let interesting = match format {
        UsageFormat::Anthropic => may_hold(data, &[b"\"usage\"", b"message_st", b"\"error\""]),
        UsageFormat::OpenAiChat => {
            usage_object(data)
                || may_hold(data, &[b"\"error\""])
                || (observed.model.is_none() && may_hold(data, &[b"\"model\""]))
        }
        UsageFormat::OpenAiResponses => may_hold(
            data,
            &[
                b"response.c",
                b"response.in",
                b"response.failed",
                b"\"error\"",
            ],
        ),
        UsageFormat::Gemini => may_hold(data, &[b"usageMetadata", b"\"error\""]),
    };
    if !interesting {
        return;
    }
    // JSON parsing validates UTF-8 per complete event, so a multi-byte
    // character split across chunks is never decoded half.
    if let Some(event) = Message::parse(data) {
        observed.apply_event(format, &event);
    } else if lines > 1 {
        // Events not separated by blank lines: each line on its own.
        for line in data.split(|&b| b == b'\n') {
            sse_event(format, line, 1, observed);
        }
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
        let s = "data: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}\n\n\
data: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":30,\"output_tokens\":9,\"cache_read_input_tokens\":4}}\n\n";
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
    fn chat_usage_spelled_with_spaces_is_read() {
        // Python's json.dumps: a space after every colon and comma.
        let body = "data: {\"id\": \"c\", \"model\": \"qwen\", \"choices\": [], \"usage\": null}\n\n\
data: {\"id\": \"c\", \"model\": \"qwen\", \"choices\": [], \"usage\": {\"prompt_tokens\": 11, \"completion_tokens\": 4, \"total_tokens\": 15}}\n\n\
data: [DONE]\n\n";
        let o = run(UsageFormat::OpenAiChat, "text/event-stream", body);
        assert_eq!(
            o.usage,
            TokenUsage {
                input: 11,
                output: 4,
                ..Default::default()
            }
        );
        assert!(o.usage_seen && o.complete);
    }

    #[test]
    fn an_event_cut_off_before_its_blank_line_still_counts() {
        let mut tap = UsageTap::new(UsageFormat::Anthropic, Some("text/event-stream"));
        tap.feed(b"data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\r\n");
        tap.interrupt();
        assert_eq!(tap.observed().usage.output, 9);
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
