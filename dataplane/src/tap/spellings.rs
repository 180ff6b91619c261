//! Property tests: every valid spelling of every usage shape reads the same.
//! Events are written with any JSON whitespace, key order, string escapes and
//! number forms, unknown members, SSE comments and fields, any line endings,
//! data split over several `data:` lines, and cut into chunks anywhere.
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::spelling::{Dice, spell};

/// Members a real upstream might add, including decoys that only look like usage.
fn sprinkle(value: &mut Value, dice: &mut Dice) {
    if let Value::Object(map) = value {
        if dice.chance(40) {
            map.insert(
                "x_extra".into(),
                json!({"usage": {"input_tokens": 999_999, "prompt_tokens": 999_999}, "list": [1, null, true, "\"usage\":{"]}),
            );
        }
        if dice.chance(30) {
            map.insert(
                "note".into(),
                json!("text with \"usage\": {\"output_tokens\": 5} inside"),
            );
        }
        for v in map.values_mut() {
            if v.is_object() && dice.chance(50) {
                sprinkle(v, dice);
            }
        }
    }
}

/// Text a content delta carries: quotes, escapes, other scripts, emoji, newlines.
fn text(dice: &mut Dice) -> String {
    let pieces = [
        "hello", " ", "\"q\"", "\\", "\n", "世界", "é", "🦀", "/", "data: x", "\r", "\u{1}",
        "usage",
    ];
    (0..dice.below(6) + 1)
        .map(|_| *dice.pick(&pieces))
        .collect()
}

/// The counts a test stream reports.
#[derive(Debug, Clone, Copy)]
struct Counts {
    input: u64,
    output: u64,
    cache_write: u64,
    cache_write_1h: u64,
    cache_read: u64,
    extra: u64,
}

fn counts() -> impl Strategy<Value = Counts> {
    (
        0..5_000_000u64,
        0..500_000u64,
        0..100_000u64,
        0..100_000u64,
        0..5_000_000u64,
        0..1_000u64,
    )
        .prop_map(
            |(input, output, cache_write, cache_write_1h, cache_read, extra)| Counts {
                input,
                output,
                cache_write,
                cache_write_1h: cache_write_1h.min(cache_write),
                cache_read,
                extra,
            },
        )
}

/// The events (as JSON) of one streamed response, and the usage they report.
fn stream(format: UsageFormat, c: Counts, dice: &mut Dice) -> (Vec<Value>, TokenUsage) {
    let deltas = dice.below(4);
    match format {
        UsageFormat::Anthropic => {
            let mut events = vec![json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [], "stop_reason": null,
                "usage": {"input_tokens": c.input, "cache_creation_input_tokens": c.cache_write,
                    "cache_read_input_tokens": c.cache_read, "output_tokens": 1,
                    "cache_creation": {"ephemeral_5m_input_tokens": c.cache_write - c.cache_write_1h,
                        "ephemeral_1h_input_tokens": c.cache_write_1h}}}})];
            events.push(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
            for _ in 0..deltas {
                events.push(json!({"type": "ping"}));
                events.push(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text(dice)}}));
            }
            events.push(json!({"type": "content_block_stop", "index": 0}));
            events.push(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": c.output.max(1)}}));
            events.push(json!({"type": "message_stop"}));
            let usage = TokenUsage {
                input: c.input,
                output: c.output.max(1),
                cache_creation: c.cache_write,
                cache_creation_1h: c.cache_write_1h,
                cache_read: c.cache_read,
            };
            (events, usage)
        }
        UsageFormat::OpenAiChat => {
            let cached = c.cache_read.min(c.input);
            let chunk = |delta: Value| {
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                "system_fingerprint": null, "choices": [{"index": 0, "delta": delta, "finish_reason": null}], "usage": null})
            };
            let mut events = vec![chunk(json!({"role": "assistant", "content": ""}))];
            for _ in 0..deltas {
                events.push(chunk(json!({"content": text(dice)})));
            }
            events.push(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
                "choices": [], "usage": {"prompt_tokens": c.input, "completion_tokens": c.output,
                    "total_tokens": c.input + c.output, "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": c.output.min(c.extra)}}}));
            let usage = TokenUsage {
                input: c.input - cached,
                output: c.output,
                cache_read: cached,
                ..TokenUsage::default()
            };
            (events, usage)
        }
        UsageFormat::OpenAiResponses => {
            let cached = c.cache_read.min(c.input);
            let mut events = vec![
                json!({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "object": "response", "model": "gpt-5", "status": "in_progress", "usage": null}}),
                json!({"type": "response.in_progress", "sequence_number": 1, "response": {"id": "resp_1", "object": "response", "model": "gpt-5", "status": "in_progress", "usage": null}}),
            ];
            for _ in 0..deltas {
                events.push(json!({"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0, "delta": text(dice)}));
            }
            let terminal = *dice.pick(&["response.completed", "response.incomplete"]);
            events.push(json!({"type": terminal, "sequence_number": 9, "response": {"id": "resp_1", "object": "response",
                "model": "gpt-5", "status": "completed", "output": [{"type": "message", "content": [{"type": "output_text", "text": text(dice)}]}],
                "usage": {"input_tokens": c.input, "input_tokens_details": {"cached_tokens": cached},
                    "output_tokens": c.output, "output_tokens_details": {"reasoning_tokens": c.output.min(c.extra)},
                    "total_tokens": c.input + c.output}}}));
            let usage = TokenUsage {
                input: c.input - cached,
                output: c.output,
                cache_read: cached,
                ..TokenUsage::default()
            };
            (events, usage)
        }
        UsageFormat::Gemini => {
            let cached = c.cache_read.min(c.input);
            let tool = c.extra;
            let metadata = |candidates: u64, thoughts: u64| {
                json!({"promptTokenCount": c.input,
                "cachedContentTokenCount": cached, "toolUsePromptTokenCount": tool, "candidatesTokenCount": candidates,
                "thoughtsTokenCount": thoughts, "totalTokenCount": c.input + tool + candidates + thoughts,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": c.input}]})
            };
            let chunk = |t: String, meta: Value, finish: bool| {
                let mut candidate =
                    json!({"content": {"role": "model", "parts": [{"text": t}]}, "index": 0});
                if finish {
                    candidate["finishReason"] = json!("STOP");
                }
                json!({"candidates": [candidate], "usageMetadata": meta, "modelVersion": "gemini-2.5-pro", "responseId": "r1"})
            };
            let thoughts = c.output.min(c.extra);
            let mut events = Vec::new();
            for i in 0..deltas {
                events.push(chunk(text(dice), metadata(i as u64, 0), false));
            }
            events.push(chunk(text(dice), metadata(c.output, thoughts), true));
            let usage = TokenUsage {
                input: c.input + tool - cached,
                output: c.output + thoughts,
                cache_read: cached,
                ..TokenUsage::default()
            };
            (events, usage)
        }
    }
}

/// The whole-body form of the same response.
fn body(format: UsageFormat, c: Counts, dice: &mut Dice) -> (Value, TokenUsage) {
    let (events, usage) = stream(format, c, dice);
    let body = match format {
        UsageFormat::Anthropic => {
            let mut message = events[0]["message"].clone();
            message["usage"]["output_tokens"] = json!(usage.output);
            message["content"] = json!([{"type": "text", "text": text(dice)}]);
            message
        }
        UsageFormat::OpenAiChat => {
            let last = events.last().expect("a usage chunk");
            json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text(dice)}, "finish_reason": "stop"}],
                "usage": last["usage"].clone()})
        }
        UsageFormat::OpenAiResponses => events.last().expect("terminal")["response"].clone(),
        UsageFormat::Gemini => match dice.below(3) {
            0 => events.last().expect("last chunk").clone(),
            // Code Assist wraps the response.
            1 => json!({"response": events.last().expect("last chunk").clone(), "traceId": "t"}),
            // `streamGenerateContent` without `alt=sse`: the chunks as an array.
            _ => Value::Array(events),
        },
    };
    (body, usage)
}

/// Frames events as an SSE stream, with any legal framing.
fn sse(events: &[String], done: bool, dice: &mut Dice) -> Vec<u8> {
    let mut out = String::new();
    if dice.chance(10) {
        out.push('\u{feff}');
    }
    // A CR then an LF is one line ending, so an LF never follows a CR-ended line.
    let eol = |dice: &mut Dice, out: &mut String| {
        let choices: &[&str] = if out.ends_with('\r') {
            &["\r\n", "\r"]
        } else {
            &["\n", "\r\n", "\r"]
        };
        out.push_str(choices[dice.below(choices.len())]);
    };
    let mut datas: Vec<String> = events.to_vec();
    if done {
        datas.push("[DONE]".into());
    }
    for data in &datas {
        if dice.chance(20) {
            out.push_str(": keep-alive");
            eol(dice, &mut out);
        }
        if dice.chance(60) {
            out.push_str("event: e");
            eol(dice, &mut out);
        }
        if dice.chance(10) {
            out.push_str("id: 7");
            eol(dice, &mut out);
            out.push_str("retry: 1000");
            eol(dice, &mut out);
        }
        // Line breaks inside the JSON (whitespace) split it over data lines.
        for line in data.split("\r\n").flat_map(|l| l.split(['\r', '\n'])) {
            out.push_str(if dice.chance(50) { "data: " } else { "data:" });
            out.push_str(line);
            eol(dice, &mut out);
        }
        eol(dice, &mut out);
    }
    if dice.chance(20) {
        // A stream may end without the last blank line.
        while out.ends_with('\n') || out.ends_with('\r') {
            out.pop();
        }
    }
    out.into_bytes()
}

fn read(format: UsageFormat, content_type: &str, bytes: &[u8], dice: &mut Dice) -> Observed {
    let mut tap = UsageTap::new(format, Some(content_type));
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = (dice.below(40) + 1).min(rest.len());
        tap.feed(&rest[..n]);
        rest = &rest[n..];
    }
    tap.finish();
    tap.observed().clone()
}

fn formats() -> impl Strategy<Value = UsageFormat> {
    prop_oneof![
        Just(UsageFormat::Anthropic),
        Just(UsageFormat::OpenAiChat),
        Just(UsageFormat::OpenAiResponses),
        Just(UsageFormat::Gemini),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_spelling_of_a_stream_reads_the_same(format in formats(), c in counts(), seed in 1..u64::MAX) {
        let mut dice = Dice(seed);
        let (mut events, expected) = stream(format, c, &mut dice);
        let spelled: Vec<String> = events
            .iter_mut()
            .map(|e| {
                sprinkle(e, &mut dice);
                let mut s = String::new();
                spell(e, &mut dice, &mut s);
                s
            })
            .collect();
        let bytes = sse(&spelled, format == UsageFormat::OpenAiChat, &mut dice);
        let observed = read(format, "text/event-stream; charset=utf-8", &bytes, &mut dice);
        prop_assert_eq!(observed.usage, expected, "{}", String::from_utf8_lossy(&bytes));
        prop_assert!(observed.usage_seen);
        prop_assert!(observed.complete);
        prop_assert!(observed.error.is_none());
        prop_assert!(observed.model.is_some());
    }

    #[test]
    fn any_spelling_of_a_body_reads_the_same(format in formats(), c in counts(), seed in 1..u64::MAX) {
        let mut dice = Dice(seed);
        let (mut value, expected) = body(format, c, &mut dice);
        sprinkle(&mut value, &mut dice);
        let mut s = String::new();
        if dice.chance(10) {
            s.push('\u{feff}');
        }
        spell(&value, &mut dice, &mut s);
        let observed = read(format, "application/json", s.as_bytes(), &mut dice);
        prop_assert_eq!(observed.usage, expected, "{}", s);
        prop_assert!(observed.complete && observed.usage_seen);
    }
}
