//! Sticky-session keys: which conversation a request belongs to, read from the request body and headers.

use std::borrow::Cow;

use http::HeaderMap;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Most bytes of one key's input that are hashed; longer input is keyed by its start.
const MAX_HASHED: usize = 1 << 20;

/// The request fields the relay reads; the body itself is forwarded as sent.
/// The large parts stay raw and are parsed only when a session fallback needs them.
#[derive(Deserialize, Default)]
#[serde(bound(deserialize = "'de: 'a"))] // every field borrows from the body
pub struct RequestHead<'a> {
    #[serde(default, deserialize_with = "borrowed")]
    pub model: Option<Cow<'a, str>>,
    #[serde(default)]
    pub stream: bool,
    /// The relay checks `include_usage` itself.
    pub stream_options: Option<&'a RawValue>,
    metadata: Option<&'a RawValue>,
    system: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    max_tokens: Option<&'a RawValue>,
    prompt_cache_key: Option<&'a RawValue>,
    previous_response_id: Option<&'a RawValue>,
    instructions: Option<&'a RawValue>,
    input: Option<&'a RawValue>,
    session_id: Option<&'a RawValue>,
    contents: Option<&'a RawValue>,
    #[serde(rename = "systemInstruction", alias = "system_instruction")]
    system_instruction: Option<&'a RawValue>,
}

impl<'a> RequestHead<'a> {
    /// Reads the head of a request body, which must be a JSON object.
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        // A derived struct would also accept a JSON array of its fields.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(serde::de::Error::custom("not a JSON object"));
        }
        serde_json::from_slice(body)
    }

    /// `stream_options.include_usage`, when the client set it.
    pub fn include_usage(&self) -> Option<bool> {
        #[derive(Deserialize)]
        struct StreamOptions {
            include_usage: Option<bool>,
        }
        object::<StreamOptions>(self.stream_options?)?.include_usage
    }

    /// `system`, unparsed.
    pub fn system(&self) -> Option<&'a RawValue> {
        self.system
    }

    /// `metadata`, unparsed.
    pub fn metadata(&self) -> Option<&'a RawValue> {
        self.metadata
    }

    /// `max_tokens`, when it is a whole number (in any spelling: `1`, `1.0`, `1e0`).
    pub fn max_tokens(&self) -> Option<u64> {
        let n: f64 = serde_json::from_str(self.max_tokens?.get()).ok()?;
        (n.fract() == 0.0 && (0.0..=(1u64 << 53) as f64).contains(&n)).then_some(n as u64)
    }

    /// Runs `f` over the ids in Claude Code's `metadata.user_id`: before 2.1.78
    /// `user_{64 hex}_account_{uuid or empty}_session_{uuid}`, from 2.1.78 a JSON
    /// string `{"device_id":..,"account_uuid":..,"session_id":..}`. `None` when
    /// user_id is in neither format; a callback, as the JSON form's ids borrow
    /// from a string unescaped here.
    pub fn claude_code_user<R>(&self, f: impl FnOnce(&ClaudeCodeUser<'_>) -> R) -> Option<R> {
        #[derive(Deserialize)]
        #[serde(bound(deserialize = "'de: 'a"))]
        struct Ids<'a> {
            user_id: Option<Str<'a>>,
            session_id: Option<Str<'a>>,
            // Raw, so an odd value fails the shape check rather than the parse.
            device_id: Option<&'a RawValue>,
            account_uuid: Option<&'a RawValue>,
        }
        let user_id = object::<Ids>(self.metadata?)?.user_id?.0;
        let user_id = user_id.trim();
        if user_id.starts_with('{') {
            let ids = serde_json::from_str::<Ids>(user_id).ok()?;
            let session = ids.session_id?.0;
            let device = ids.device_id.and_then(string);
            let account = ids.account_uuid.and_then(string);
            return Some(f(&ClaudeCodeUser {
                device_id: device.as_deref().unwrap_or(""),
                account_uuid: account.as_deref().unwrap_or(""),
                session_id: &session,
            }));
        }
        let rest = user_id.strip_prefix("user_")?;
        let (device, rest) = rest.split_at_checked(64)?;
        let (account, session) = rest.strip_prefix("_account_")?.split_once("_session_")?;
        let uuid_like = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        let valid = device.bytes().all(|b| b.is_ascii_hexdigit()) && uuid_like(account);
        if !(valid && session.len() == 36 && uuid_like(session)) {
            return None;
        }
        Some(f(&ClaudeCodeUser {
            device_id: device,
            account_uuid: account,
            session_id: session,
        }))
    }
}

/// The ids Claude Code puts in `metadata.user_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaudeCodeUser<'s> {
    pub device_id: &'s str,
    /// Empty unless the user signed in with a claude.ai account.
    pub account_uuid: &'s str,
    pub session_id: &'s str,
}

impl ClaudeCodeUser<'_> {
    /// Each id has the shape Claude Code gives it: a 64-hex device id, a uuid
    /// session, and a uuid or empty account.
    pub fn is_well_formed(&self) -> bool {
        let uuid = |s: &str| {
            s.len() == 36
                && s.bytes().enumerate().all(|(i, b)| match i {
                    8 | 13 | 18 | 23 => b == b'-',
                    _ => b.is_ascii_hexdigit(),
                })
        };
        self.device_id.len() == 64
            && self.device_id.bytes().all(|b| b.is_ascii_hexdigit())
            && uuid(self.session_id)
            && (self.account_uuid.is_empty() || uuid(self.account_uuid))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Anthropic,
    OpenAiChat,
    OpenAiResponses,
    Gemini,
}

/// A request's sticky-session key, and what it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub hash: String,
    pub source: &'static str,
}

/// A source's name and the prefix hashed before its value, so equal values
/// from different sources give different keys.
struct Source(&'static str, &'static str);

const CLAUDE_CODE: Source = Source("claude_code", "claude_code:");
const SESSION_HEADER: Source = Source("codex_session_id", "codex_session_id:");
const PROMPT_CACHE_KEY: Source = Source("prompt_cache_key", "prompt_cache_key:");
const PREVIOUS_RESPONSE: Source = Source("previous_response_id", "previous_response_id:");
const GEMINI_SESSION: Source = Source("gemini_session", "gemini_session:");
const GEMINI_INSTALL: Source = Source("gemini_session", "gemini_installation:");
const CACHE_CONTROL: Source = Source("cache_control", "cache_control:");
const SYSTEM: Source = Source("system", "system:");
const FIRST_MESSAGE: Source = Source("first_message", "first_message:");

// Gemini CLI (google-gemini/gemini-cli, packages/core/src/code_assist/converter.ts)
// sends its session id only to Code Assist, as `request.session_id`: a body
// `session_id` is that field once a Code Assist account wraps the body as
// `request`. To a standard generateContent endpoint (core/contentGenerator.ts,
// API key or GOOGLE_GEMINI_BASE_URL) it sends no session id, only this header
// with its installation id while usage statistics are on (the default). That
// spans an installation's conversations, but beats the system instruction,
// which every Gemini CLI user shares.
const GEMINI_INSTALL_HEADER: &str = "x-gemini-api-privileged-user-id";

/// The session a request belongs to, if any can be told.
pub fn session(format: Format, headers: &HeaderMap, head: &RequestHead<'_>) -> Option<Session> {
    let header_session = || {
        let value = header(headers, &["session_id", "session-id", "x-session-id"])?;
        hashed(&SESSION_HEADER, |k| k.piece(value))
    };
    let prompt_cache_key = || raw_id(&PROMPT_CACHE_KEY, head.prompt_cache_key);
    match format {
        Format::Anthropic => claude_code(head)
            .or_else(|| cache_control(head))
            .or_else(|| hashed(&SYSTEM, |k| k.content(head.system?)))
            .or_else(|| hashed(&FIRST_MESSAGE, |k| k.item(first(head.messages)?))),
        Format::OpenAiChat => header_session()
            .or_else(prompt_cache_key)
            .or_else(|| chat_message(head, &SYSTEM, true))
            .or_else(|| chat_message(head, &FIRST_MESSAGE, false)),
        Format::OpenAiResponses => header_session()
            .or_else(prompt_cache_key)
            .or_else(|| raw_id(&PREVIOUS_RESPONSE, head.previous_response_id))
            .or_else(|| hashed(&SYSTEM, |k| k.content(head.instructions?)))
            .or_else(|| {
                // A string input is the first message itself.
                let input = head.input.filter(|i| !i.get().starts_with('['));
                hashed(&FIRST_MESSAGE, |k| {
                    k.item(input.or_else(|| first(head.input))?)
                })
            }),
        Format::Gemini => raw_id(&GEMINI_SESSION, head.session_id)
            .or_else(|| {
                let value = header(headers, &[GEMINI_INSTALL_HEADER])?;
                hashed(&GEMINI_INSTALL, |k| k.piece(value))
            })
            .or_else(|| hashed(&SYSTEM, |k| k.item(head.system_instruction?)))
            .or_else(|| hashed(&FIRST_MESSAGE, |k| k.item(first(head.contents)?))),
    }
}

/// The session key a response id opens: a later request whose `previous_response_id` is `id` belongs to it.
pub fn response_session(id: &str) -> String {
    let mut k = Keyer::new(&PREVIOUS_RESPONSE);
    k.piece(id);
    k.hash()
}

/// The session uuid in Claude Code's `metadata.user_id`.
fn claude_code(head: &RequestHead<'_>) -> Option<Session> {
    head.claude_code_user(|ids| hashed(&CLAUDE_CODE, |k| k.piece(ids.session_id)))?
}

/// The system blocks marked `cache_control`; failing those, the first
/// message's first marked block. Later messages are not searched: a
/// breakpoint moving along the conversation would give a new key every turn.
fn cache_control(head: &RequestHead<'_>) -> Option<Session> {
    let marked = |raw: &&RawValue| object::<Block>(raw).is_some_and(|b| b.cache_control.is_some());
    hashed(&CACHE_CONTROL, |k| {
        let system = head.system.map(items).unwrap_or_default();
        system
            .into_iter()
            .filter(marked)
            .try_for_each(|b| k.block(b))?;
        if k.pieces == 0 {
            let first = object::<Item>(first(head.messages)?)?;
            k.block(items(first.content?).into_iter().find(marked)?);
        }
        Some(())
    })
}

/// The first non-empty chat message that is (or is not) a system/developer message.
fn chat_message(head: &RequestHead<'_>, source: &Source, system: bool) -> Option<Session> {
    let is_system = |raw: &&RawValue| {
        let role = object::<Item>(raw).and_then(|m| m.role).map(|r| r.0);
        matches!(role.as_deref(), Some("system" | "developer"))
    };
    let mut found = items(head.messages?)
        .into_iter()
        .filter(|m| is_system(m) == system);
    found.find_map(|raw| hashed(source, |k| k.item(raw)))
}

fn header<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    let usable = |v: &&str| !v.trim().is_empty();
    names
        .iter()
        .find_map(|n| headers.get(*n)?.to_str().ok().filter(usable))
}

fn raw_id(source: &Source, raw: Option<&RawValue>) -> Option<Session> {
    let value = string(raw?)?;
    hashed(source, |k| k.piece(&value))
}

/// Runs `fill` over a fresh key; `None` when it fed nothing.
fn hashed(source: &Source, fill: impl FnOnce(&mut Keyer) -> Option<()>) -> Option<Session> {
    let mut k = Keyer::new(source);
    fill(&mut k);
    (k.pieces > 0).then(|| Session {
        source: source.0,
        hash: k.hash(),
    })
}

/// An incremental session hash over non-empty pieces, newline-separated.
struct Keyer {
    sha: Sha256,
    left: usize,
    pieces: usize,
}

impl Keyer {
    fn new(source: &Source) -> Self {
        Keyer {
            sha: Sha256::new_with_prefix(source.1),
            left: MAX_HASHED,
            pieces: 0,
        }
    }

    /// Ids and text alike are trimmed; a blank piece adds nothing.
    fn piece(&mut self, s: &str) -> Option<()> {
        let s = s.trim();
        if !s.is_empty() {
            if self.pieces > 0 {
                self.feed(b"\n");
            }
            self.pieces += 1;
            self.feed(s.as_bytes());
        }
        Some(())
    }

    fn feed(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.left);
        self.sha.update(&bytes[..n]);
        self.left -= n;
    }

    /// A string, or each block of an array; any other value as raw JSON.
    fn content(&mut self, raw: &RawValue) -> Option<()> {
        match raw.get().as_bytes().first()? {
            b'"' => self.piece(&string(raw)?),
            b'[' => items(raw).into_iter().try_for_each(|b| self.block(b)),
            b'n' => Some(()),
            _ => self.piece(raw.get()),
        }
    }

    /// The content of a message or Gemini `Content`, nothing for a message
    /// without any; any other item (a Responses tool call, say) as content.
    fn item(&mut self, raw: &RawValue) -> Option<()> {
        let Some(item) = object::<Item>(raw) else {
            return self.content(raw);
        };
        match item.content.or(item.parts) {
            Some(content) => self.content(content),
            None if item.role.is_some() => Some(()),
            None => self.content(raw),
        }
    }

    /// The text of a text block (or Gemini text part); any other block as raw JSON.
    fn block(&mut self, raw: &RawValue) -> Option<()> {
        let text_kind = |t: &Str| matches!(&*t.0, "text" | "input_text" | "output_text");
        let block = object::<Block>(raw).filter(|b| b.kind.as_ref().is_none_or(text_kind));
        match block.and_then(|b| b.text) {
            Some(text) => self.piece(&text.0),
            None => self.piece(raw.get()),
        }
    }

    fn hash(self) -> String {
        hex::encode(&self.sha.finalize()[..16])
    }
}

/// A JSON string, borrowed from the body unless it has escapes.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct Block<'a> {
    #[serde(rename = "type")]
    kind: Option<Str<'a>>,
    text: Option<Str<'a>>,
    cache_control: Option<&'a RawValue>,
}

/// A message (`content`) or Gemini `Content` (`parts`).
#[derive(Deserialize)]
#[serde(bound(deserialize = "'de: 'a"))]
struct Item<'a> {
    role: Option<Str<'a>>,
    content: Option<&'a RawValue>,
    parts: Option<&'a RawValue>,
}

fn borrowed<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Ok(Option::<Str<'de>>::deserialize(d)?.map(|s| s.0))
}

/// A JSON object as `T`; checked first, as a derived struct would also take an array.
fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    let json = raw.get();
    json.starts_with('{')
        .then(|| serde_json::from_str(json).ok())?
}

fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Str>(raw.get()).ok().map(|s| s.0)
}

fn first(raw: Option<&RawValue>) -> Option<&RawValue> {
    items(raw?).first().copied()
}

/// The elements of a JSON array, unparsed; none for anything else.
fn items(raw: &RawValue) -> Vec<&RawValue> {
    // Checked first: a failed parse builds an error message, which is not free.
    if !raw.get().starts_with('[') {
        return Vec::new();
    }
    serde_json::from_str(raw.get()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const DEVICE: &str = "a19c9dc11203bb0fa766aee951d390357a3231cfd681a041b62041216ea6a45a";
    const ACCOUNT: &str = "e3a9c1d2-5b7f-4a60-8e2d-1c3b5a7f9d04";
    const SESSION: &str = "4b1c9e2a-7d3f-4e8a-9c61-2f5b8d0e7a13";

    fn run(format: Format, headers: &Value, body: &Value) -> Option<Session> {
        let mut map = HeaderMap::new();
        for (name, value) in headers.as_object().into_iter().flatten() {
            let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            map.insert(name, value.as_str().unwrap().parse().unwrap());
        }
        let body = body.to_string();
        session(format, &map, &RequestHead::parse(body.as_bytes()).unwrap())
    }

    /// Checks rows of [format, headers, body, key prefix, value] (null prefix: no
    /// session) against the documented key, sha256 over "{prefix}:{value}", first
    /// 16 bytes in hex; returns the keys.
    fn check(rows: Value) -> Vec<String> {
        let rows = rows.as_array().unwrap().iter();
        rows.filter_map(|row| {
            let format = match row[0].as_str().unwrap() {
                "anthropic" => Format::Anthropic,
                "chat" => Format::OpenAiChat,
                "responses" => Format::OpenAiResponses,
                _ => Format::Gemini,
            };
            let got = run(format, &row[1], &row[2]).map(|s| (s.source.to_string(), s.hash));
            let want = row[3].as_str().map(|prefix| {
                let digest = Sha256::digest(format!("{prefix}:{}", row[4].as_str().unwrap()));
                // The installation id is a Gemini session source with its own prefix.
                let source = prefix.replace("gemini_installation", "gemini_session");
                (source, hex::encode(&digest[..16]))
            });
            assert_eq!(got, want, "{row}");
            got.map(|(_, hash)| hash)
        })
        .collect()
    }

    #[test]
    fn claude_code_user_id() {
        let legacy = format!("user_{DEVICE}_account__session_{SESSION}");
        let account = format!("user_{DEVICE}_account_{ACCOUNT}_session_{SESSION}");
        let new = json!({"device_id": DEVICE, "account_uuid": ACCOUNT, "session_id": SESSION});
        let no_session = json!({"device_id": DEVICE, "account_uuid": ACCOUNT}).to_string();
        let blank = json!({"device_id": DEVICE, "account_uuid": "", "session_id": " "}).to_string();
        let short = format!("user_{DEVICE}_account__session_{}", &SESSION[1..]);
        let device = format!("user_{}_account__session_{SESSION}", "g".repeat(64));
        let email = format!("user_{DEVICE}_account_a@b.c_session_{SESSION}");
        let sys = "You are Claude Code.";
        check(json!([
            ["anthropic", {}, {"metadata": {"user_id": legacy}, "system": sys},
                "claude_code", SESSION],
            ["anthropic", {}, {"metadata": {"user_id": account}, "system": sys},
                "claude_code", SESSION],
            ["anthropic", {}, {"metadata": {"user_id": new.to_string()}}, "claude_code", SESSION],
            // Anything else in user_id falls through.
            ["anthropic", {}, {"metadata": {"user_id": no_session}, "system": sys}, "system", sys],
            ["anthropic", {}, {"metadata": {"user_id": blank}, "system": sys}, "system", sys],
            ["anthropic", {}, {"metadata": {"user_id": short}, "system": sys}, "system", sys],
            ["anthropic", {}, {"metadata": {"user_id": device}, "system": sys}, "system", sys],
            ["anthropic", {}, {"metadata": {"user_id": email}, "system": sys}, "system", sys],
            ["anthropic", {}, {"metadata": {"user_id": "user-8812"}, "system": sys}, "system", sys],
        ]));
    }

    #[test]
    fn anthropic_fallbacks() {
        let mark = json!({"type": "ephemeral"});
        let system = |billing| {
            json!([{"type": "text", "text": billing},
                {"type": "text", "text": "You are Claude Code.", "cache_control": mark},
                {"type": "text", "text": "Tool rules.", "cache_control": mark}])
        };
        let marked = json!([{"role": "user", "content": [{"type": "text", "text": "<reminder>"},
            {"type": "text", "text": "Fix it.", "cache_control": mark}]}]);
        let image = json!([{"role": "user",
            "content": [{"type": "image", "url": "u", "cache_control": mark}]}]);
        let later = json!([{"role": "user", "content": [{"type": "text", "text": "Fix it."},
            {"type": "image", "url": "u"}]}, {"role": "user",
            "content": [{"type": "text", "text": "later", "cache_control": mark}]}]);
        let blocks = json!([{"type": "text", "text": "Be"}, {"type": "text", "text": "brief."}]);
        check(json!([
            // Only marked blocks count: the billing block changes per request.
            ["anthropic", {}, {"system": system("cch=93a1f;"), "messages": marked},
                "cache_control", "You are Claude Code.\nTool rules."],
            ["anthropic", {}, {"system": system("cch=0b7e2;")},
                "cache_control", "You are Claude Code.\nTool rules."],
            ["anthropic", {}, {"system": "Be brief.", "messages": marked},
                "cache_control", "Fix it."],
            ["anthropic", {}, {"messages": image}, "cache_control",
                r#"{"cache_control":{"type":"ephemeral"},"type":"image","url":"u"}"#],
            // A mark on a later message does not count.
            ["anthropic", {}, {"system": "Be brief.", "messages": later}, "system", "Be brief."],
            ["anthropic", {}, {"system": blocks}, "system", "Be\nbrief."],
            ["anthropic", {}, {"system": " ", "messages": later},
                "first_message", "Fix it.\n{\"type\":\"image\",\"url\":\"u\"}"],
            ["anthropic", {}, {"system": "", "messages": [{"role": "user", "content": ""}]},
                null, null],
        ]));
    }

    #[test]
    fn openai_keys_in_priority_order() {
        let body = json!({"model": "gpt-5-codex", "prompt_cache_key": "pck-7",
            "previous_response_id": "resp_0a1b", "instructions": "You are Codex.", "input": "hi"});
        let input = json!([{"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "hi"}]},
            {"role": "user", "content": "next"}]);
        let chat = json!([{"role": "system", "content": null}, {"role": "user", "content": "2+2?"},
            {"role": "developer", "content": [{"type": "text", "text": "Be exact."}]}]);
        check(json!([
            ["responses", {"session_id": "0199a1c2"}, body, "codex_session_id", "0199a1c2"],
            ["responses", {"session-id": "0199a1c2"}, body, "codex_session_id", "0199a1c2"],
            ["responses", {"session_id": " ", "x-session-id": "0199a1c2"}, body,
                "codex_session_id", "0199a1c2"],
            ["responses", {"session_id": ""}, body, "prompt_cache_key", "pck-7"],
            ["responses", {}, {"prompt_cache_key": "", "previous_response_id": "resp_0a1b"},
                "previous_response_id", "resp_0a1b"],
            ["responses", {}, {"previous_response_id": null, "instructions": "You are Codex."},
                "system", "You are Codex."],
            ["responses", {}, {"instructions": " ", "input": "hi"}, "first_message", "hi"],
            ["responses", {}, {"input": input}, "first_message", "hi"],
            ["responses", {}, {"input": [null, "hi"]}, null, null],
            ["chat", {"x-session-id": "c-4"}, {"prompt_cache_key": "t"}, "codex_session_id", "c-4"],
            ["chat", {}, {"prompt_cache_key": "t-3", "messages": chat}, "prompt_cache_key", "t-3"],
            ["chat", {}, {"messages": chat}, "system", "Be exact."],
            ["chat", {}, {"messages": [chat[0], chat[1]]}, "first_message", "2+2?"],
            ["chat", {"session_id": ""}, {"prompt_cache_key": "", "messages": []}, null, null],
        ]));
        let prev = check(
            json!([["responses", {}, {"previous_response_id": "resp_0a1b"},
            "previous_response_id", "resp_0a1b"]]),
        );
        assert_eq!(prev, [response_session("resp_0a1b")]);
        assert_ne!(prev, [response_session("resp_0a1c")]);
    }

    #[test]
    fn gemini_session_and_fallbacks() {
        let install = json!({"x-gemini-api-privileged-user-id": "5c1e8a70"});
        let system = json!({"parts": [{"text": "Core rules."}]});
        let contents = json!([{"role": "user", "parts": [{"text": "This is the Gemini CLI."},
            {"text": "List files."}]}, {"role": "model", "parts": [{"text": "ok"}]}]);
        check(json!([
            ["gemini", install, {"session_id": "f81d4fae", "systemInstruction": system},
                "gemini_session", "f81d4fae"],
            ["gemini", install, {"systemInstruction": system}, "gemini_installation", "5c1e8a70"],
            ["gemini", {}, {"systemInstruction": system, "contents": contents},
                "system", "Core rules."],
            ["gemini", {}, {"system_instruction": system}, "system", "Core rules."],
            ["gemini", {}, {"systemInstruction": {"parts": []}, "contents": contents},
                "first_message", "This is the Gemini CLI.\nList files."],
            ["gemini", {"x-gemini-api-privileged-user-id": " "},
                {"session_id": "", "contents": [{"parts": [{"text": ""}]}]}, null, null],
        ]));
    }

    #[test]
    fn equal_ids_from_different_sources_differ() {
        let legacy = format!("user_{DEVICE}_account__session_{SESSION}");
        let mut keys = check(json!([
            ["chat", {"session_id": SESSION}, {}, "codex_session_id", SESSION],
            ["chat", {}, {"prompt_cache_key": SESSION}, "prompt_cache_key", SESSION],
            ["responses", {}, {"previous_response_id": SESSION}, "previous_response_id", SESSION],
            ["gemini", {}, {"session_id": SESSION}, "gemini_session", SESSION],
            ["gemini", {"x-gemini-api-privileged-user-id": SESSION}, {},
                "gemini_installation", SESSION],
            ["anthropic", {}, {"metadata": {"user_id": legacy}}, "claude_code", SESSION],
            ["anthropic", {}, {"system": SESSION}, "system", SESSION],
            ["anthropic", {}, {"messages": [{"role": "user", "content": SESSION}]},
                "first_message", SESSION],
        ]));
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 8);
    }

    #[test]
    fn long_input_is_hashed_up_to_the_bound() {
        let first = |text: String| {
            let body = json!({"messages": [{"role": "user", "content": text}]});
            run(Format::Anthropic, &json!({}), &body).unwrap()
        };
        let long = |tail: &str| first(format!("{}{tail}", "x".repeat(MAX_HASHED)));
        assert_eq!(long("a"), long("b"));
        assert_ne!(first("xa".into()), first("xb".into()));
    }

    #[test]
    fn parse_reads_the_head_and_rejects_non_objects() {
        let body = br#" {"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false}}"#;
        let head = RequestHead::parse(body).unwrap();
        assert!(matches!(head.model, Some(Cow::Borrowed("gpt-4o"))));
        assert!(head.stream);
        assert_eq!(head.include_usage(), Some(false));
        let escaped = RequestHead::parse(br#"{"model":"a\u0062c"}"#).unwrap();
        assert_eq!(escaped.model.as_deref(), Some("abc"));
        let empty = RequestHead::parse(b"{}").unwrap();
        assert!(empty.model.is_none() && !empty.stream && empty.include_usage().is_none());
        let odd = RequestHead::parse(br#"{"stream_options":[true]}"#).unwrap();
        assert_eq!(odd.include_usage(), None);
        for bad in [&b"[1,2]"[..], b"null", b"1", b"", b"{\"model\":3}", b"{"] {
            assert!(RequestHead::parse(bad).is_err(), "{bad:?}");
        }
        // An array with a value for every field would pass as the struct.
        for n in 0..40 {
            let fields = format!("[null,false{}]", ",null".repeat(n));
            assert!(RequestHead::parse(fields.as_bytes()).is_err());
        }
    }
}
