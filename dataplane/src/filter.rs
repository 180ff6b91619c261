//! The client filter: which client programs (Claude Code, Codex CLI, Gemini CLI) may use the relay.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use aiproxy_proto::v1 as pb;
use aiproxy_shared::domain::{ClientName, FilterMode};
use http::header::{HeaderMap, HeaderName, USER_AGENT};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::session::RequestHead;

/// How a client program names itself: its User-Agent (or, for Codex, the
/// `originator` header).
fn named_by(client: ClientName, ua: &str, headers: &HeaderMap) -> bool {
    match client {
        ClientName::ClaudeCode => ua
            .strip_prefix("claude-cli/")
            .is_some_and(starts_with_digit),
        ClientName::CodexCli => {
            codex_ua(ua).is_some_and(|(_, version)| starts_with_digit(version))
                || header(headers, &ORIGINATOR).is_some_and(|o| CODEX_ORIGINATORS.contains(&o))
        }
        ClientName::GeminiCli => gemini_ua(ua).is_some_and(starts_with_digit),
    }
}

/// The User-Agent a refusal says it expected.
fn expected_ua(client: ClientName) -> &'static str {
    match client {
        ClientName::ClaudeCode => "claude-cli/<version>",
        ClientName::CodexCli => "codex_cli_rs/<version>",
        ClientName::GeminiCli => "GeminiCLI/<version>",
    }
}

/// Used when the snapshot leaves `prompt_similarity` at 0.
pub const DEFAULT_PROMPT_SIMILARITY: f64 = 0.5;

/// The filter one API key's requests go through.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub mode: FilterMode,
    /// An enabled filter with an empty list refuses everything.
    pub allowed: Vec<ClientName>,
    /// Lowest similarity (0–1) of Claude Code's system prompt in strict mode.
    pub prompt_similarity: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::off()
    }
}

impl Policy {
    pub fn off() -> Self {
        Policy {
            mode: FilterMode::Off,
            allowed: Vec::new(),
            prompt_similarity: DEFAULT_PROMPT_SIMILARITY,
        }
    }

    /// A key's policy: its non-empty mode overrides the global one (even a
    /// disabled global filter), its non-empty client list the global list.
    /// An enabled global filter without a mode is simple. Both lists are
    /// checked, so a bad global list is caught even where keys override it.
    pub fn resolve(
        global: &pb::ClientFilter,
        key_mode: &str,
        key_clients: &[String],
    ) -> Result<Policy, String> {
        let global_mode = match global.mode.as_str() {
            "" => FilterMode::Simple,
            name => parse_mode(name)?,
        };
        let mode = match key_mode {
            "" if global.enabled => global_mode,
            "" => FilterMode::Off,
            name => parse_mode(name)?,
        };
        let global_allowed = parse_clients(&global.allowed_clients)?;
        let allowed = if key_clients.is_empty() {
            global_allowed
        } else {
            parse_clients(key_clients)?
        };
        let similarity = global.prompt_similarity;
        if !(0.0..=1.0).contains(&similarity) {
            return Err(format!(
                "client filter prompt_similarity {similarity} is not between 0 and 1"
            ));
        }
        Ok(Policy {
            mode,
            allowed,
            prompt_similarity: if similarity > 0.0 {
                similarity
            } else {
                DEFAULT_PROMPT_SIMILARITY
            },
        })
    }

    fn threshold(&self) -> f64 {
        if self.prompt_similarity > 0.0 {
            self.prompt_similarity.min(1.0)
        } else {
            DEFAULT_PROMPT_SIMILARITY
        }
    }
}

fn parse_mode(name: &str) -> Result<FilterMode, String> {
    FilterMode::parse(name).ok_or_else(|| {
        format!("unknown client filter mode {name:?} (expected off, simple or strict)")
    })
}

fn parse_clients(names: &[String]) -> Result<Vec<ClientName>, String> {
    let mut clients = Vec::with_capacity(names.len());
    for name in names {
        let client = ClientName::parse(name).ok_or_else(|| {
            format!("unknown client {name:?} (expected claude-code, codex-cli or gemini-cli)")
        })?;
        if !clients.contains(&client) {
            clients.push(client);
        }
    }
    Ok(clients)
}

/// Why a request was refused, short enough to follow "client not allowed: ".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(Cow<'static, str>);

impl Refusal {
    fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        Refusal(reason.into())
    }

    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

/// Checks a request against `policy`. `messages_path` is true for Anthropic
/// `/v1/messages` (not count_tokens). Returns the client the request passed
/// as; in off mode, the client its User-Agent names, if any.
pub fn check(
    policy: &Policy,
    headers: &HeaderMap,
    messages_path: bool,
    head: &RequestHead<'_>,
) -> Result<Option<ClientName>, Refusal> {
    let ua = header(headers, &USER_AGENT).unwrap_or("");
    let allowed = || {
        policy
            .allowed
            .iter()
            .copied()
            .find(|c| named_by(*c, ua, headers))
    };
    match policy.mode {
        FilterMode::Off => Ok(ClientName::ALL
            .iter()
            .copied()
            .find(|c| named_by(*c, ua, headers))),
        FilterMode::Simple => allowed()
            .map(Some)
            .ok_or_else(|| not_allowed(policy, ua, headers)),
        FilterMode::Strict => {
            let Some(client) = allowed() else {
                return Err(not_allowed(policy, ua, headers));
            };
            match client {
                ClientName::ClaudeCode => {
                    strict_claude_code(headers, messages_path, head, policy.threshold())
                }
                ClientName::CodexCli => strict_codex(headers),
                ClientName::GeminiCli => strict_gemini(headers),
            }
            .map(|()| Some(client))
        }
    }
}

fn not_allowed(policy: &Policy, ua: &str, headers: &HeaderMap) -> Refusal {
    if policy.allowed.is_empty() {
        return Refusal::new("no client is allowed");
    }
    if let Some(client) = ClientName::ALL
        .iter()
        .copied()
        .find(|c| named_by(*c, ua, headers))
    {
        return Refusal::new(format!("{client} is not allowed"));
    }
    let expected: Vec<_> = policy.allowed.iter().map(|c| expected_ua(*c)).collect();
    let expected = expected.join(" or ");
    if ua.is_empty() {
        return Refusal::new(format!("User-Agent missing ({expected} expected)"));
    }
    Refusal::new(format!(
        "User-Agent {} names no allowed client ({expected} expected)",
        shorten(ua)
    ))
}

const X_APP: HeaderName = HeaderName::from_static("x-app");
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const ORIGINATOR: HeaderName = HeaderName::from_static("originator");
const GOOG_API_CLIENT: HeaderName = HeaderName::from_static("x-goog-api-client");

// Strict mode for Claude Code: what real Claude Code sends (claude-code
// 2.1.88 src/services/api/claude.ts queryModel, utils/sideQuery.ts,
// services/claudeAiLimits.ts, services/tokenEstimation.ts):
// - every model call goes through queryModel, which prefixes the system prompt
//   with the billing attribution block and an identity line (constants/system.ts),
//   title generation and other small-model calls (queryHaiku) included: they
//   pass the similarity check like the main loop;
// - side queries (memory selection, classifiers) may skip the identity line
//   but keep the attribution block: admitted when that block is well formed and
//   names the User-Agent's version;
// - the quota probe and the token-count fallback send no system prompt at all,
//   with max_tokens 1: admitted, as one output token is worth nothing to abuse;
// - count_tokens carries neither system nor metadata (the API takes no
//   metadata there): on non-messages paths only the headers are checked.
fn strict_claude_code(
    headers: &HeaderMap,
    messages_path: bool,
    head: &RequestHead<'_>,
    threshold: f64,
) -> Result<(), Refusal> {
    let ua = header(headers, &USER_AGENT).unwrap_or("");
    let Some(version) = ua.strip_prefix("claude-cli/").and_then(semver) else {
        return Err(Refusal::new(
            "User-Agent claude-cli/<major.minor.patch> expected",
        ));
    };
    for (name, missing) in [
        (&X_APP, "header x-app missing"),
        (&ANTHROPIC_BETA, "header anthropic-beta missing"),
        (&ANTHROPIC_VERSION, "header anthropic-version missing"),
    ] {
        if header(headers, name).is_none() {
            return Err(Refusal::new(missing));
        }
    }
    if !messages_path {
        return Ok(());
    }
    match head.claude_code_user(|ids| ids.is_well_formed()) {
        Some(true) => {}
        _ if head.metadata().is_none() => return Err(Refusal::new("metadata.user_id missing")),
        _ => return Err(Refusal::new("metadata.user_id is not Claude Code's")),
    }
    let prompt = SystemHead::read(head.system());
    let attributed = prompt
        .attribution
        .as_deref()
        .is_some_and(|a| attribution_names(a, version));
    let Some(first) = prompt.first.as_deref() else {
        return if attributed || (prompt.attribution.is_none() && head.max_tokens() == Some(1)) {
            Ok(())
        } else if prompt.attribution.is_some() {
            Err(attribution_mismatch(version))
        } else {
            Err(Refusal::new("system prompt missing"))
        };
    };
    match similarity(first, threshold) {
        Some(score) if score >= threshold => Ok(()),
        _ if attributed => Ok(()),
        _ if prompt.attribution.is_some() => Err(attribution_mismatch(version)),
        Some(score) => Err(Refusal::new(format!(
            "system prompt is not Claude Code's (similarity {score:.2} < {threshold:.2})"
        ))),
        None => Err(Refusal::new(
            "system prompt is not Claude Code's (first block far longer than its identity line)",
        )),
    }
}

fn attribution_mismatch(version: &str) -> Refusal {
    Refusal::new(format!(
        "billing attribution block does not match User-Agent claude-cli/{version}"
    ))
}

/// Claude Code's identity lines (constants/system.ts): the CLI, the Agent SDK
/// with the Claude Code preset, the bare Agent SDK.
const IDENTITIES: [&str; 3] = [
    "You are Claude Code, Anthropic's official CLI for Claude.",
    "You are Claude Code, Anthropic's official CLI for Claude, running within the Claude Agent SDK.",
    "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
];

/// The block Claude Code 2.1 puts before the identity line:
/// `x-anthropic-billing-header: cc_version=<version>.<3 hex>; cc_entrypoint=<name>;`.
const ATTRIBUTION: &str = "x-anthropic-billing-header:";

/// Whether an attribution block is well formed and carries `version`.
fn attribution_names(block: &str, version: &str) -> bool {
    let Some(fields) = block.strip_prefix(ATTRIBUTION) else {
        return false;
    };
    let (mut versioned, mut entrypoint) = (false, false);
    for field in fields.split(';').map(str::trim) {
        if let Some(value) = field.strip_prefix("cc_version=") {
            // The 3-hex fingerprint is not recomputed: its input is a message
            // the relay cannot reliably rebuild.
            let fingerprint = value
                .strip_prefix(version)
                .and_then(|v| v.strip_prefix('.'));
            versioned = fingerprint
                .is_some_and(|f| f.len() == 3 && f.bytes().all(|b| b.is_ascii_hexdigit()));
        } else if let Some(value) = field.strip_prefix("cc_entrypoint=") {
            entrypoint = !value.is_empty();
        }
    }
    versioned && entrypoint
}

/// The leading blocks of a system prompt: the attribution block, if it comes
/// first, and the first other text.
#[derive(Default)]
struct SystemHead<'a> {
    attribution: Option<Cow<'a, str>>,
    first: Option<Cow<'a, str>>,
}

impl<'a> SystemHead<'a> {
    fn read(system: Option<&'a RawValue>) -> Self {
        /// A JSON string, borrowed unless it has escapes.
        #[derive(Deserialize)]
        struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
        #[derive(Deserialize)]
        #[serde(bound(deserialize = "'de: 'a"))]
        struct Block<'a> {
            #[serde(rename = "type")]
            kind: Option<Text<'a>>,
            text: Option<Text<'a>>,
        }
        let mut head = SystemHead::default();
        let Some(system) = system else {
            return head;
        };
        let mut take = |text: Cow<'a, str>| {
            if text.trim().is_empty() {
                return false;
            }
            if head.attribution.is_none() && head.first.is_none() && text.starts_with(ATTRIBUTION) {
                head.attribution = Some(text);
                return false;
            }
            head.first = Some(text);
            true
        };
        match system.get().as_bytes().first() {
            Some(b'"') => {
                if let Ok(Text(text)) = serde_json::from_str(system.get()) {
                    take(text);
                }
            }
            Some(b'[') => {
                // Only the leading blocks are unescaped; the long prompt stays raw.
                let blocks: Vec<&RawValue> = serde_json::from_str(system.get()).unwrap_or_default();
                for block in blocks {
                    let Ok(block) = serde_json::from_str::<Block<'a>>(block.get()) else {
                        continue;
                    };
                    let text_kind = block.kind.is_none_or(|k| k.0 == "text");
                    if let Some(Text(text)) = block.text.filter(|_| text_kind)
                        && take(text)
                    {
                        break;
                    }
                }
            }
            _ => {}
        }
        head
    }
}

/// Each identity line's character bigrams, sorted, with whitespace normalised.
static IDENTITY_BIGRAMS: LazyLock<[Vec<u64>; 3]> = LazyLock::new(|| {
    IDENTITIES.map(|line| bigrams(&normalize(line, usize::MAX).unwrap_or_default()))
});

/// The best Dice coefficient (over character bigrams, whitespace runs as one
/// space) of `text` against the identity lines; `None` when `text` is too long
/// for any of them to reach `threshold`, which keeps the cost bounded.
fn similarity(text: &str, threshold: f64) -> Option<f64> {
    let templates = &*IDENTITY_BIGRAMS;
    let longest = templates.iter().map(Vec::len).max().unwrap_or(0);
    // Dice(a, b) <= 2|b| / (|a| + |b|), so |a| > |b| (2 - t) / t cannot reach t.
    let most = (longest as f64 * (2.0 - threshold) / threshold).ceil();
    let limit = if most < (usize::MAX / 2) as f64 {
        most as usize + 1
    } else {
        usize::MAX
    };
    let text = bigrams(&normalize(text, limit)?);
    let best = templates
        .iter()
        .map(|template| dice(&text, template))
        .fold(0.0, f64::max);
    Some(best)
}

/// `text` with whitespace runs as one space and the ends trimmed; `None` past `limit` chars.
fn normalize(text: &str, limit: usize) -> Option<Vec<char>> {
    let mut out = Vec::with_capacity(text.len().min(limit).min(1024));
    let mut gap = false;
    for c in text.chars() {
        if c.is_whitespace() {
            gap = !out.is_empty();
            continue;
        }
        if gap {
            out.push(' ');
            gap = false;
        }
        out.push(c);
        if out.len() > limit {
            return None;
        }
    }
    Some(out)
}

fn bigrams(chars: &[char]) -> Vec<u64> {
    let mut pairs: Vec<u64> = chars
        .windows(2)
        .map(|w| (u64::from(w[0]) << 32) | u64::from(w[1]))
        .collect();
    pairs.sort_unstable();
    pairs
}

/// Sørensen–Dice over two sorted bigram multisets.
fn dice(a: &[u64], b: &[u64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return if a == b { 1.0 } else { 0.0 };
    }
    let (mut i, mut j, mut common) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    2.0 * common as f64 / (a.len() + b.len()) as f64
}

/// Codex's originators (codex-rs login/src/auth/default_client.rs
/// `is_first_party_originator`, exec/src/lib.rs): its User-Agent is
/// `<originator>/<version> (<os> <os version>; <arch>) <terminal>`.
const CODEX_ORIGINATORS: [&str; 4] = ["codex_cli_rs", "codex-tui", "codex_exec", "codex_vscode"];

/// The originator a Codex User-Agent starts with, and what follows its `/`.
fn codex_ua(ua: &str) -> Option<(&'static str, &str)> {
    CODEX_ORIGINATORS.into_iter().find_map(|originator| {
        let rest = ua.strip_prefix(originator)?.strip_prefix('/')?;
        Some((originator, rest))
    })
}

// Strict mode for Codex: the User-Agent Codex builds, and the `originator`
// header its HTTP client always sends beside it, naming the same originator.
fn strict_codex(headers: &HeaderMap) -> Result<(), Refusal> {
    let ua = header(headers, &USER_AGENT).unwrap_or("");
    let versioned = codex_ua(ua).filter(|(_, rest)| {
        semver(rest).is_some_and(|version| rest[version.len()..].starts_with(" ("))
    });
    let Some((originator, _)) = versioned else {
        return Err(Refusal::new(
            "User-Agent codex_cli_rs/<major.minor.patch> (<os>; <arch>) expected",
        ));
    };
    match header(headers, &ORIGINATOR) {
        None => Err(Refusal::new("header originator missing")),
        Some(sent) if sent != originator => Err(Refusal::new(format!(
            "originator {} does not match User-Agent {originator}",
            shorten(sent)
        ))),
        Some(_) => Ok(()),
    }
}

/// What follows the product name in a Gemini CLI User-Agent (core/
/// contentGenerator.ts): `GeminiCLI/<version>/<model> (<platform>; <arch>;
/// <surface>)`, `GeminiCLI-<client name>/…` when embedded, and the VS Code
/// form `CloudCodeVSCode/<version> (…; proxy_client=geminicli)`.
fn gemini_ua(ua: &str) -> Option<&str> {
    if let Some(rest) = ua.strip_prefix("GeminiCLI") {
        if let Some(rest) = rest.strip_prefix('/') {
            return Some(rest);
        }
        let (name, rest) = rest.strip_prefix('-')?.split_once('/')?;
        return (!name.is_empty() && !name.contains(' ')).then_some(rest);
    }
    let rest = ua.strip_prefix("CloudCodeVSCode/")?;
    rest.contains("proxy_client=geminicli").then_some(rest)
}

// Strict mode for Gemini CLI: its User-Agent with a full version, and the
// `x-goog-api-client` header the @google/genai SDK it calls through always
// sets (js-genai src/_api_client.ts getDefaultHeaders).
fn strict_gemini(headers: &HeaderMap) -> Result<(), Refusal> {
    let ua = header(headers, &USER_AGENT).unwrap_or("");
    if gemini_ua(ua).and_then(semver).is_none() {
        return Err(Refusal::new(
            "User-Agent GeminiCLI/<major.minor.patch> expected",
        ));
    }
    let sdk = header(headers, &GOOG_API_CLIENT).is_some_and(|v| v.starts_with("google-genai-sdk/"));
    if !sdk {
        return Err(Refusal::new(
            "header x-goog-api-client google-genai-sdk/… expected",
        ));
    }
    Ok(())
}

/// A header's trimmed value, when it is non-empty text.
fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    (!value.is_empty()).then_some(value)
}

fn starts_with_digit(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_digit)
}

/// The `major.minor.patch` (digits only) `s` starts with.
fn semver(s: &str) -> Option<&str> {
    let bytes = s.as_bytes();
    let mut end = 0;
    for part in 0..3 {
        if part > 0 {
            if bytes.get(end) != Some(&b'.') {
                return None;
            }
            end += 1;
        }
        let start = end;
        while bytes.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start {
            return None;
        }
    }
    Some(&s[..end])
}

/// A client-sent value cut for a refusal (header values are visible ASCII).
fn shorten(value: &str) -> Cow<'_, str> {
    const MAX: usize = 60;
    match value.get(..MAX) {
        Some(cut) if value.len() > MAX => Cow::Owned(format!("{cut}…")),
        _ => Cow::Borrowed(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    macro_rules! fixtures {
        ($($name:literal),* $(,)?) => {
            [$(($name, include_str!(concat!("../tests/fixtures/clients/", $name, ".json")))),*]
        };
    }

    const FIXTURES: [(&str, &str); 12] = fixtures![
        "claude-code-2.1.x-messages",
        "claude-code-2.0.x-messages",
        "claude-code-2.1.x-title",
        "claude-code-2.1.x-count-tokens",
        "claude-code-2.1.x-quota",
        "claude-code-2.1.x-side-query",
        "codex-cli-responses",
        "gemini-cli-generate",
        "lookalike-curl-faked-ua",
        "lookalike-faked-headers-other-prompt",
        "lookalike-malformed-user-id",
        "lookalike-attribution-version-mismatch",
    ];

    /// A recorded request: what `check` is given, and what the fixture expects.
    struct Request {
        name: &'static str,
        headers: HeaderMap,
        messages_path: bool,
        body: String,
        client: ClientName,
        strict: bool,
        reason: String,
    }

    impl Request {
        fn load(name: &'static str, json: &str) -> Self {
            let v: Value = serde_json::from_str(json).unwrap();
            let path = v["path"].as_str().unwrap();
            let expect = &v["expect"];
            Request {
                name,
                headers: header_map(&v["headers"]),
                messages_path: path.split('?').next() == Some("/v1/messages"),
                body: v["body"].to_string(),
                client: ClientName::parse(expect["client"].as_str().unwrap()).unwrap(),
                strict: expect["strict"].as_bool().unwrap(),
                reason: expect["reason"].as_str().unwrap_or("").to_string(),
            }
        }

        fn check(&self, policy: &Policy) -> Result<Option<ClientName>, Refusal> {
            let head = RequestHead::parse(self.body.as_bytes()).unwrap();
            check(policy, &self.headers, self.messages_path, &head)
        }

        /// The same request with `edit` applied to its body.
        fn with_body(&self, edit: impl FnOnce(&mut Value)) -> Self {
            let mut body: Value = serde_json::from_str(&self.body).unwrap();
            edit(&mut body);
            Request {
                headers: self.headers.clone(),
                body: body.to_string(),
                reason: self.reason.clone(),
                ..*self
            }
        }

        fn without_header(&self, name: &str) -> Self {
            let mut request = self.with_body(|_| {});
            request.headers.remove(name);
            request
        }

        fn with_header(&self, name: &'static str, value: &str) -> Self {
            let mut request = self.with_body(|_| {});
            request.headers.insert(name, value.parse().unwrap());
            request
        }
    }

    fn header_map(headers: &Value) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers.as_object().unwrap() {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            map.insert(name, value.as_str().unwrap().parse().unwrap());
        }
        map
    }

    fn all() -> Vec<Request> {
        FIXTURES
            .iter()
            .map(|(name, json)| Request::load(name, json))
            .collect()
    }

    fn get(name: &str) -> Request {
        let (name, json) = FIXTURES.iter().find(|(n, _)| *n == name).unwrap();
        Request::load(name, json)
    }

    fn policy(mode: FilterMode, allowed: &[ClientName]) -> Policy {
        Policy {
            mode,
            allowed: allowed.to_vec(),
            prompt_similarity: DEFAULT_PROMPT_SIMILARITY,
        }
    }

    fn refusal(result: Result<Option<ClientName>, Refusal>) -> String {
        result.unwrap_err().reason().to_string()
    }

    #[test]
    fn off_admits_anything() {
        let off = Policy::off();
        for request in all() {
            assert_eq!(
                request.check(&off),
                Ok(Some(request.client)),
                "{}",
                request.name
            );
        }
        let head = RequestHead::parse(b"{}").unwrap();
        assert_eq!(check(&off, &HeaderMap::new(), true, &head), Ok(None));
        let empty_list = Policy {
            allowed: Vec::new(),
            ..Policy::off()
        };
        assert_eq!(
            check(&empty_list, &HeaderMap::new(), false, &head),
            Ok(None)
        );
    }

    #[test]
    fn simple_admits_each_allowed_client_by_its_user_agent() {
        let simple = policy(FilterMode::Simple, ClientName::ALL);
        // Look-alikes too: simple mode reads nothing but the User-Agent.
        for request in all() {
            assert_eq!(
                request.check(&simple),
                Ok(Some(request.client)),
                "{}",
                request.name
            );
        }
        let codex = get("codex-cli-responses");
        for ua in [
            "codex_exec/0.89.0 (Mac OS 26.2.0; arm64) xterm-256color",
            "codex-tui/0.145.0 (Mac OS 26.5.0; arm64) iTerm.app/3.6.10 (codex-tui; 0.145.0)",
            "codex_vscode/0.35.0 (Windows 10.0.26100; x86_64) unknown (Cursor; 0.4.10)",
        ] {
            let request = codex.with_header("user-agent", ua);
            assert_eq!(
                request.check(&simple),
                Ok(Some(ClientName::CodexCli)),
                "{ua}"
            );
        }
        // Codex's originator header names it even behind another User-Agent.
        let request = codex.with_header("user-agent", "reqwest/0.12");
        assert_eq!(request.check(&simple), Ok(Some(ClientName::CodexCli)));
        let gemini = get("gemini-cli-generate");
        for ua in [
            "GeminiCLI/0.1.5 (linux; x64)",
            "GeminiCLI-a2a-server/0.34.0/gemini-2.5-pro (darwin; arm64; terminal)",
            "CloudCodeVSCode/0.34.0 (aidev_client; os_type=Linux; os_version=6.8; arch=x64; host_path=VSCode/1.99.0; proxy_client=geminicli)",
        ] {
            let request = gemini.with_header("user-agent", ua);
            assert_eq!(
                request.check(&simple),
                Ok(Some(ClientName::GeminiCli)),
                "{ua}"
            );
        }
    }

    #[test]
    fn simple_refuses_clients_not_in_the_list() {
        let claude_only = policy(FilterMode::Simple, &[ClientName::ClaudeCode]);
        assert_eq!(
            refusal(get("codex-cli-responses").check(&claude_only)),
            "codex-cli is not allowed"
        );
        assert_eq!(
            refusal(get("gemini-cli-generate").check(&claude_only)),
            "gemini-cli is not allowed"
        );
        let curl = get("lookalike-curl-faked-ua").with_header("user-agent", "curl/8.4.0");
        assert_eq!(
            refusal(curl.check(&policy(
                FilterMode::Simple,
                &[ClientName::ClaudeCode, ClientName::GeminiCli]
            ))),
            "User-Agent curl/8.4.0 names no allowed client \
             (claude-cli/<version> or GeminiCLI/<version> expected)"
        );
        let anonymous = curl.without_header("user-agent");
        assert_eq!(
            refusal(anonymous.check(&claude_only)),
            "User-Agent missing (claude-cli/<version> expected)"
        );
        for ua in [
            "claude-cli/",
            "claude-cli/x.1",
            "Claude-Cli/2.1.0",
            "GeminiCLI- /1.0",
        ] {
            let request = curl.with_header("user-agent", ua);
            assert!(
                request
                    .check(&policy(FilterMode::Simple, ClientName::ALL))
                    .is_err(),
                "{ua}"
            );
        }
        let nobody = policy(FilterMode::Simple, &[]);
        assert_eq!(
            refusal(get("claude-code-2.1.x-messages").check(&nobody)),
            "no client is allowed"
        );
    }

    #[test]
    fn strict_admits_every_real_client_request() {
        let strict = policy(FilterMode::Strict, ClientName::ALL);
        let real: Vec<_> = all().into_iter().filter(|r| r.strict).collect();
        assert_eq!(real.len(), 8);
        for request in real {
            assert_eq!(
                request.check(&strict),
                Ok(Some(request.client)),
                "{}",
                request.name
            );
        }
    }

    #[test]
    fn strict_refuses_look_alikes_with_a_reason() {
        let strict = policy(FilterMode::Strict, ClientName::ALL);
        let fakes: Vec<_> = all().into_iter().filter(|r| !r.strict).collect();
        assert_eq!(fakes.len(), 4);
        for request in fakes {
            let reason = refusal(request.check(&strict));
            assert!(
                reason.contains(&request.reason),
                "{}: {reason}",
                request.name
            );
        }
        let reason = refusal(get("lookalike-faked-headers-other-prompt").check(&strict));
        assert!(reason.ends_with("< 0.50)"), "{reason}");
    }

    #[test]
    fn strict_claude_code_checks_each_part() {
        let strict = policy(FilterMode::Strict, &[ClientName::ClaudeCode]);
        let main = get("claude-code-2.1.x-messages");
        let refused = |request: &Request| refusal(request.check(&strict));
        assert_eq!(
            refused(&main.with_header("user-agent", "claude-cli/2.1 (external, cli)")),
            "User-Agent claude-cli/<major.minor.patch> expected"
        );
        for name in ["x-app", "anthropic-beta", "anthropic-version"] {
            assert_eq!(
                refused(&main.without_header(name)),
                format!("header {name} missing")
            );
        }
        assert_eq!(
            refused(&main.with_header("x-app", " ")),
            "header x-app missing"
        );
        assert_eq!(
            refused(&main.with_body(|b| drop(b.as_object_mut().unwrap().remove("metadata")))),
            "metadata.user_id missing"
        );
        let user_id = |id: String| main.with_body(|b| b["metadata"]["user_id"] = json!(id));
        let device = "a".repeat(64);
        let session = "4b1c9e2a-7d3f-4e8a-9c61-2f5b8d0e7a13";
        for bad in [
            format!("user_{device}_account__session_{}", &session[1..]),
            json!({"device_id": device, "account_uuid": ""}).to_string(),
            json!({"device_id": "d1", "account_uuid": "", "session_id": session}).to_string(),
            json!({"device_id": device, "account_uuid": "me", "session_id": session}).to_string(),
            json!({"device_id": device, "account_uuid": "", "session_id": "s-1"}).to_string(),
        ] {
            assert_eq!(
                refused(&user_id(bad)),
                "metadata.user_id is not Claude Code's"
            );
        }
        let good = json!({"device_id": device, "session_id": session}).to_string();
        assert!(user_id(good).check(&strict).is_ok());
        // Only messages paths carry metadata and a system prompt.
        let bare = main.with_body(|b| *b = json!({"model": "claude-opus-4-6", "messages": []}));
        assert_eq!(refused(&bare), "metadata.user_id missing");
        let count = Request {
            messages_path: false,
            ..bare
        };
        assert_eq!(count.check(&strict), Ok(Some(ClientName::ClaudeCode)));
    }

    #[test]
    fn strict_claude_code_system_prompt_shapes() {
        let strict = policy(FilterMode::Strict, &[ClientName::ClaudeCode]);
        let main = get("claude-code-2.1.x-messages");
        let system = |system: Value| main.with_body(|b| b["system"] = system);
        let identity = IDENTITIES[0];
        // A string prompt, an SDK identity line, and extra whitespace all pass.
        for ok in [
            json!(identity),
            json!([{"type": "text", "text": IDENTITIES[1]}]),
            json!([{"type": "text", "text": format!("  {}\n", identity.replace(' ', "  "))}]),
            json!([{"type": "text", "text": ""}, {"type": "text", "text": IDENTITIES[2]}]),
        ] {
            assert!(system(ok.clone()).check(&strict).is_ok(), "{ok}");
        }
        assert_eq!(
            refusal(system(json!(null)).check(&strict)),
            "system prompt missing"
        );
        assert_eq!(
            refusal(system(json!([])).check(&strict)),
            "system prompt missing"
        );
        // The attribution block must name the User-Agent's version.
        let attribution = |text: &str| json!([{"type": "text", "text": text}, {"type": "text", "text": "Classify."}]);
        let side = system(attribution(
            "x-anthropic-billing-header: cc_version=2.1.88.a3f; cc_entrypoint=sdk-cli;",
        ));
        assert!(side.check(&strict).is_ok());
        for bad in [
            "x-anthropic-billing-header: cc_version=2.1.8.a3f; cc_entrypoint=cli;",
            "x-anthropic-billing-header: cc_version=2.1.88; cc_entrypoint=cli;",
            "x-anthropic-billing-header: cc_version=2.1.88.a3fz; cc_entrypoint=cli;",
            "x-anthropic-billing-header: cc_version=2.1.88.a3f;",
        ] {
            let reason = refusal(system(attribution(bad)).check(&strict));
            assert!(
                reason.starts_with("billing attribution block"),
                "{bad}: {reason}"
            );
        }
        // A first block far longer than any identity line is refused unread.
        let long = system(
            json!([{"type": "text", "text": format!("{identity} {}", "x".repeat(100_000))}]),
        );
        assert!(refusal(long.check(&strict)).contains("far longer"));
        // The quota-probe exception holds only for max_tokens 1 and no system.
        let quota = get("claude-code-2.1.x-quota");
        assert!(quota.check(&strict).is_ok());
        let longer = quota.with_body(|b| b["max_tokens"] = json!(64));
        assert_eq!(refusal(longer.check(&strict)), "system prompt missing");
    }

    #[test]
    fn similarity_threshold_edge() {
        let identity = IDENTITIES[0];
        assert_eq!(similarity(identity, 0.5), Some(1.0));
        let near = "You are Claude, an official CLI assistant for coding.";
        let score = similarity(near, 0.5).unwrap();
        assert!(score > 0.3 && score < 0.9, "{score}");
        let main = get("claude-code-2.1.x-messages");
        let request = main.with_body(|b| b["system"] = json!([{"type": "text", "text": near}]));
        let at = |threshold: f64| Policy {
            prompt_similarity: threshold,
            ..policy(FilterMode::Strict, &[ClientName::ClaudeCode])
        };
        assert!(request.check(&at(score)).is_ok());
        let reason = refusal(request.check(&at(score + 1e-9)));
        assert!(
            reason.starts_with("system prompt is not Claude Code's"),
            "{reason}"
        );
        // 0 means the default 0.5.
        assert_eq!(at(0.0).threshold(), DEFAULT_PROMPT_SIMILARITY);
        assert_eq!(request.check(&at(0.0)).is_ok(), score >= 0.5);
        // Dice edge cases.
        assert_eq!(dice(&[], &[]), 1.0);
        assert_eq!(similarity("Y", 0.5), Some(0.0));
        assert!(similarity(&"y".repeat(10_000), 1e-300).is_some());
    }

    #[test]
    fn strict_codex_wants_a_matching_originator() {
        let strict = policy(FilterMode::Strict, &[ClientName::CodexCli]);
        let codex = get("codex-cli-responses");
        assert_eq!(
            refusal(codex.without_header("originator").check(&strict)),
            "header originator missing"
        );
        assert_eq!(
            refusal(codex.with_header("originator", "codex_exec").check(&strict)),
            "originator codex_exec does not match User-Agent codex_cli_rs"
        );
        let exec = codex
            .with_header(
                "user-agent",
                "codex_exec/0.89.0 (Mac OS 26.2.0; arm64) xterm-256color",
            )
            .with_header("originator", "codex_exec");
        assert_eq!(exec.check(&strict), Ok(Some(ClientName::CodexCli)));
        for ua in [
            "codex_cli_rs/0.46 (Linux; x86_64)",
            "codex_cli_rs/0.46.0",
            "reqwest/0.12",
        ] {
            let reason = refusal(codex.with_header("user-agent", ua).check(&strict));
            assert!(
                reason.starts_with("User-Agent codex_cli_rs/"),
                "{ua}: {reason}"
            );
        }
    }

    #[test]
    fn strict_gemini_wants_the_genai_sdk() {
        let strict = policy(FilterMode::Strict, &[ClientName::GeminiCli]);
        let gemini = get("gemini-cli-generate");
        let expected = "header x-goog-api-client google-genai-sdk/… expected";
        assert_eq!(
            refusal(gemini.without_header("x-goog-api-client").check(&strict)),
            expected
        );
        let other = gemini.with_header("x-goog-api-client", "gl-python/3.12");
        assert_eq!(refusal(other.check(&strict)), expected);
        let old = gemini.with_header("user-agent", "GeminiCLI/0.1.5 (linux; x64)");
        assert_eq!(old.check(&strict), Ok(Some(ClientName::GeminiCli)));
        let unversioned = gemini.with_header("user-agent", "GeminiCLI/0.1 (linux; x64)");
        assert_eq!(
            refusal(unversioned.check(&strict)),
            "User-Agent GeminiCLI/<major.minor.patch> expected"
        );
    }

    #[test]
    fn resolve_applies_key_overrides() {
        let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let global = pb::ClientFilter {
            enabled: true,
            mode: "strict".into(),
            allowed_clients: names(&["claude-code", "codex-cli"]),
            prompt_similarity: 0.0,
        };
        let both = vec![ClientName::ClaudeCode, ClientName::CodexCli];
        let resolved = Policy::resolve(&global, "", &[]).unwrap();
        assert_eq!(
            resolved,
            Policy {
                mode: FilterMode::Strict,
                allowed: both.clone(),
                prompt_similarity: 0.5
            }
        );
        let key =
            Policy::resolve(&global, "simple", &names(&["gemini-cli", "gemini-cli"])).unwrap();
        assert_eq!(
            (key.mode, key.allowed),
            (FilterMode::Simple, vec![ClientName::GeminiCli])
        );
        assert_eq!(
            Policy::resolve(&global, "off", &[]).unwrap().mode,
            FilterMode::Off
        );
        // A disabled global filter is off unless the key sets a mode.
        let disabled = pb::ClientFilter {
            enabled: false,
            prompt_similarity: 0.8,
            ..global.clone()
        };
        assert_eq!(
            Policy::resolve(&disabled, "", &[]).unwrap().mode,
            FilterMode::Off
        );
        let key = Policy::resolve(&disabled, "strict", &[]).unwrap();
        assert_eq!(
            key,
            Policy {
                mode: FilterMode::Strict,
                allowed: both,
                prompt_similarity: 0.8
            }
        );
        let unnamed = pb::ClientFilter {
            mode: String::new(),
            ..global.clone()
        };
        assert_eq!(
            Policy::resolve(&unnamed, "", &[]).unwrap().mode,
            FilterMode::Simple
        );
        // Unknown names and bad thresholds are errors naming the value.
        let err = Policy::resolve(&global, "", &names(&["cursor"])).unwrap_err();
        assert!(err.contains("\"cursor\""), "{err}");
        let bad_global = pb::ClientFilter {
            allowed_clients: names(&["Claude-Code"]),
            ..global.clone()
        };
        let err = Policy::resolve(&bad_global, "simple", &names(&["codex-cli"])).unwrap_err();
        assert!(err.contains("\"Claude-Code\""), "{err}");
        let err = Policy::resolve(&global, "loose", &[]).unwrap_err();
        assert!(err.contains("\"loose\""), "{err}");
        let err = Policy::resolve(
            &pb::ClientFilter {
                mode: "on".into(),
                ..global.clone()
            },
            "",
            &[],
        );
        assert!(err.unwrap_err().contains("\"on\""));
        for similarity in [1.5, -0.1, f64::NAN] {
            let filter = pb::ClientFilter {
                prompt_similarity: similarity,
                ..global.clone()
            };
            assert!(Policy::resolve(&filter, "", &[]).is_err(), "{similarity}");
        }
        assert_eq!(Policy::default(), Policy::off());
        assert_eq!(FilterMode::parse("strict"), Some(FilterMode::Strict));
        assert_eq!(
            ClientName::parse("codex-cli").map(ClientName::as_str),
            Some("codex-cli")
        );
    }
}
