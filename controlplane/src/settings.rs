//! Runtime settings kept in `system_configs`: their names (the seed's),
//! types, limits and defaults, validation of changes, and the part data
//! planes receive in the snapshot.
use std::collections::BTreeMap;

use aiproxy_proto::v1 as pb;
use serde_json::{Map, Value, json};

use crate::store::{Store, StoreResult};

/// The type and limits of one setting.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Bool,
    Int {
        min: i64,
        max: i64,
    },
    Float {
        min: f64,
        max: f64,
    },
    Choice(&'static [&'static str]),
    /// A comma-separated subset of these, stored in this order.
    List(&'static [&'static str]),
}

/// One setting: its `system_configs` key, type, group and meaning.
#[derive(Debug)]
pub struct Spec {
    pub key: &'static str,
    pub kind: Kind,
    pub group: &'static str,
    pub help: &'static str,
}

pub const CLIENTS: &[&str] = &["claude-code", "codex-cli", "gemini-cli"];

pub const SPECS: &[Spec] = &[
    Spec {
        key: "account_health_check_enabled",
        kind: Kind::Bool,
        group: "health_check",
        help: "check every enabled account in the background",
    },
    Spec {
        key: "account_health_check_interval",
        kind: Kind::Int { min: 1, max: 1440 },
        group: "health_check",
        help: "minutes between checks of one account",
    },
    Spec {
        key: "account_error_threshold",
        kind: Kind::Int { min: 0, max: 1000 },
        group: "health_check",
        help: "consecutive credential failures that disable an account (0 never disables)",
    },
    Spec {
        key: "filter_enabled",
        kind: Kind::Bool,
        group: "client_filter",
        help: "admit only the allowed client programs",
    },
    Spec {
        key: "filter_mode",
        kind: Kind::Choice(&["simple", "strict"]),
        group: "client_filter",
        help: "simple checks the User-Agent; strict also headers, metadata.user_id and the system prompt",
    },
    Spec {
        key: "filter_allowed_clients",
        kind: Kind::List(CLIENTS),
        group: "client_filter",
        help: "client programs admitted when the filter is on",
    },
    Spec {
        key: "filter_prompt_similarity",
        kind: Kind::Float { min: 0.0, max: 1.0 },
        group: "client_filter",
        help: "lowest similarity of the system prompt to Claude Code's in strict mode",
    },
    Spec {
        key: "request_timeout",
        kind: Kind::Int { min: 1, max: 7200 },
        group: "relay",
        help: "seconds an upstream request may take",
    },
    Spec {
        key: "session_ttl",
        kind: Kind::Int {
            min: 1,
            max: 30 * 86400,
        },
        group: "relay",
        help: "seconds a conversation stays bound to its account after its last request",
    },
    Spec {
        key: "concurrency_ttl",
        kind: Kind::Int {
            min: 10,
            max: 86400,
        },
        group: "relay",
        help: "seconds a concurrency slot outlives a node that stopped renewing it",
    },
    Spec {
        key: "unavailable_ttl",
        kind: Kind::Int { min: 1, max: 86400 },
        group: "relay",
        help: "longest seconds an account stays marked unavailable after an upstream error",
    },
    Spec {
        key: "wait_timeout",
        kind: Kind::Int { min: 0, max: 600 },
        group: "relay",
        help: "seconds a request waits for a free account slot (0 does not wait)",
    },
    Spec {
        key: "request_log_retention_days",
        kind: Kind::Int { min: 0, max: 36500 },
        group: "retention",
        help: "days request logs are kept (0 keeps them forever)",
    },
];

fn spec(key: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.key == key)
}

/// Defaults of the settings, from the configuration file where it has them.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub request_timeout_secs: u64,
    pub session_ttl_secs: u64,
    pub concurrency_ttl_secs: u64,
    pub unavailable_ttl_secs: u64,
    pub wait_timeout_secs: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        let proxy = aiproxy_shared::config::ProxySettings::default();
        let cache = aiproxy_shared::config::CacheSettings::default();
        Defaults {
            request_timeout_secs: proxy.timeout,
            session_ttl_secs: cache.session_ttl,
            concurrency_ttl_secs: cache.concurrency_ttl,
            unavailable_ttl_secs: cache.unavailable_ttl,
            wait_timeout_secs: cache.wait_timeout,
        }
    }
}

impl Defaults {
    fn value(&self, key: &str) -> Value {
        match key {
            "account_health_check_enabled" => json!(false),
            "account_health_check_interval" => json!(5),
            "account_error_threshold" => json!(5),
            "filter_enabled" => json!(false),
            "filter_mode" => json!("simple"),
            "filter_allowed_clients" => json!(CLIENTS),
            "filter_prompt_similarity" => json!(0.5),
            "request_timeout" => json!(self.request_timeout_secs),
            "session_ttl" => json!(self.session_ttl_secs),
            "concurrency_ttl" => json!(self.concurrency_ttl_secs),
            "unavailable_ttl" => json!(self.unavailable_ttl_secs),
            "wait_timeout" => json!(self.wait_timeout_secs),
            "request_log_retention_days" => json!(0),
            _ => Value::Null,
        }
    }
}

/// The settings in force: stored values over the defaults.
#[derive(Debug, Clone)]
pub struct SystemSettings {
    values: BTreeMap<&'static str, Value>,
    /// Keys set in `system_configs` rather than defaulted.
    stored: Vec<&'static str>,
}

impl SystemSettings {
    /// Reads `system_configs`; a stored value that no longer parses is
    /// ignored with a warning, so a bad row never stops the relay.
    pub async fn load(store: &Store, defaults: &Defaults) -> StoreResult<SystemSettings> {
        Ok(Self::from_rows(&store.system_configs().await?, defaults))
    }

    pub fn from_rows(rows: &BTreeMap<String, String>, defaults: &Defaults) -> SystemSettings {
        let mut values = BTreeMap::new();
        let mut stored = Vec::new();
        for spec in SPECS {
            let parsed = rows.get(spec.key).and_then(|raw| match parse_stored(spec.kind, raw) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(key = spec.key, value = %raw, error = %e, "ignoring a stored setting that does not parse");
                    None
                }
            });
            if parsed.is_some() {
                stored.push(spec.key);
            }
            values.insert(spec.key, parsed.unwrap_or_else(|| defaults.value(spec.key)));
        }
        SystemSettings { values, stored }
    }

    fn int(&self, key: &str) -> u64 {
        self.values.get(key).and_then(Value::as_u64).unwrap_or(0)
    }

    fn flag(&self, key: &str) -> bool {
        self.values
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    pub fn health_check_enabled(&self) -> bool {
        self.flag("account_health_check_enabled")
    }

    pub fn health_check_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.int("account_health_check_interval").max(1) * 60)
    }

    pub fn error_threshold(&self) -> u32 {
        self.int("account_error_threshold") as u32
    }

    pub fn retention_days(&self) -> u64 {
        self.int("request_log_retention_days")
    }

    /// What data planes apply: the request timeout, the client filter, and
    /// the TTLs an operator set (unset ones stay each node's configuration).
    pub fn relay(&self, billing_utc_offset_seconds: i32) -> pb::RelaySettings {
        let ms = |key| self.int(key) * 1000;
        let set_ms = |key| {
            if self.stored.contains(&key) {
                self.int(key) * 1000
            } else {
                0
            }
        };
        let clients = self
            .values
            .get("filter_allowed_clients")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        pb::RelaySettings {
            request_timeout_ms: ms("request_timeout"),
            billing_utc_offset_seconds,
            session_ttl_ms: set_ms("session_ttl"),
            concurrency_ttl_ms: set_ms("concurrency_ttl"),
            unavailable_ttl_ms: set_ms("unavailable_ttl"),
            wait_timeout_ms: set_ms("wait_timeout"),
            wait_timeout_set: self.stored.contains(&"wait_timeout"),
            client_filter: Some(pb::ClientFilter {
                enabled: self.flag("filter_enabled"),
                mode: self
                    .values
                    .get("filter_mode")
                    .and_then(Value::as_str)
                    .unwrap_or("simple")
                    .to_string(),
                allowed_clients: clients,
                prompt_similarity: self
                    .values
                    .get("filter_prompt_similarity")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.5),
            }),
        }
    }

    /// Every setting's value in force, by name.
    pub fn values(&self) -> impl Iterator<Item = (&'static str, &Value)> {
        self.values.iter().map(|(k, v)| (*k, v))
    }

    /// The settings stored rather than defaulted.
    pub fn stored(&self) -> &[&'static str] {
        &self.stored
    }
}

/// A validated change: values to store, and keys to return to their defaults.
#[derive(Debug, Default, PartialEq)]
pub struct Change {
    pub set: BTreeMap<String, String>,
    pub unset: Vec<String>,
}

/// Validates a JSON object of settings (`null` returns a key to its default).
pub fn validate(patch: &Map<String, Value>) -> Result<Change, String> {
    if patch.is_empty() {
        return Err("no settings given".into());
    }
    let mut change = Change::default();
    for (key, value) in patch {
        let spec = spec(key).ok_or_else(|| {
            let known: Vec<&str> = SPECS.iter().map(|s| s.key).collect();
            format!("unknown setting {key} (known: {})", known.join(", "))
        })?;
        if value.is_null() {
            change.unset.push(key.clone());
            continue;
        }
        let stored = to_stored(spec.kind, value).map_err(|e| format!("{key}: {e}"))?;
        change.set.insert(key.clone(), stored);
    }
    Ok(change)
}

/// The text stored for a JSON value, or why it does not fit.
fn to_stored(kind: Kind, value: &Value) -> Result<String, String> {
    match kind {
        Kind::Bool => value
            .as_bool()
            .map(|b| b.to_string())
            .ok_or_else(|| "must be true or false".into()),
        Kind::Int { min, max } => match value.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(n.to_string()),
            _ => Err(format!("must be an integer from {min} to {max}")),
        },
        Kind::Float { min, max } => match value.as_f64() {
            Some(f) if (min..=max).contains(&f) => Ok(f.to_string()),
            _ => Err(format!("must be a number from {min} to {max}")),
        },
        Kind::Choice(choices) => match value.as_str() {
            Some(s) if choices.contains(&s) => Ok(s.to_string()),
            _ => Err(format!("must be one of {}", choices.join(", "))),
        },
        Kind::List(allowed) => {
            let items = value
                .as_array()
                .ok_or_else(|| format!("must be a list of {}", allowed.join(", ")))?;
            let mut names = Vec::new();
            for item in items {
                match item.as_str() {
                    Some(s) if allowed.contains(&s) => names.push(s),
                    _ => return Err(format!("entries must be among {}", allowed.join(", "))),
                }
            }
            Ok(allowed
                .iter()
                .filter(|a| names.contains(a))
                .copied()
                .collect::<Vec<_>>()
                .join(","))
        }
    }
}

/// Reads a stored text back (the inverse of [`to_stored`]); the seed's
/// `'true'`/`'5'` style rows parse too.
fn parse_stored(kind: Kind, raw: &str) -> Result<Value, String> {
    let raw = raw.trim();
    let value = match kind {
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => json!(true),
            "false" | "0" | "no" | "off" => json!(false),
            _ => return Err("not a boolean".into()),
        },
        Kind::Int { .. } => json!(raw.parse::<i64>().map_err(|e| e.to_string())?),
        Kind::Float { .. } => json!(raw.parse::<f64>().map_err(|e| e.to_string())?),
        Kind::Choice(_) => json!(raw),
        Kind::List(_) => json!(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        ),
    };
    to_stored(kind, &value)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stored_values_override_defaults_and_bad_rows_fall_back() {
        let s = SystemSettings::from_rows(
            &rows(&[
                ("account_health_check_enabled", "true"),
                ("account_health_check_interval", "7"),
                ("account_error_threshold", "banana"),
                ("filter_allowed_clients", "codex-cli, claude-code"),
            ]),
            &Defaults::default(),
        );
        assert!(s.health_check_enabled());
        assert_eq!(s.health_check_interval().as_secs(), 420);
        assert_eq!(
            s.error_threshold(),
            5,
            "an unparsable row keeps the default"
        );
        let relay = s.relay(3600);
        let filter = relay.client_filter.expect("filter");
        assert_eq!(filter.allowed_clients, vec!["codex-cli", "claude-code"]);
        assert_eq!(relay.request_timeout_ms, 600_000);
        assert_eq!(relay.session_ttl_ms, 0, "unset TTLs stay the nodes' own");
        assert!(!relay.wait_timeout_set);
        let no_wait =
            SystemSettings::from_rows(&rows(&[("wait_timeout", "0")]), &Defaults::default())
                .relay(0);
        assert!(
            no_wait.wait_timeout_set && no_wait.wait_timeout_ms == 0,
            "0 set is \"do not wait\""
        );
        assert_eq!(relay.billing_utc_offset_seconds, 3600);
        assert!(s.stored.contains(&"account_health_check_interval"));
        assert!(!s.stored.contains(&"account_error_threshold"));
    }

    #[test]
    fn changes_are_validated_per_type() {
        let patch = |v: Value| v.as_object().cloned().expect("object");
        let change = validate(&patch(json!({
            "account_error_threshold": 3,
            "filter_mode": "strict",
            "filter_allowed_clients": ["gemini-cli", "claude-code"],
            "session_ttl": null,
        })))
        .expect("valid");
        assert_eq!(change.set["account_error_threshold"], "3");
        assert_eq!(
            change.set["filter_allowed_clients"], "claude-code,gemini-cli",
            "stored in a stable order"
        );
        assert_eq!(change.unset, vec!["session_ttl"]);

        for (bad, why) in [
            (json!({"filter_mode": "paranoid"}), "one of"),
            (
                json!({"account_health_check_interval": 0}),
                "from 1 to 1440",
            ),
            (json!({"filter_enabled": "yes"}), "true or false"),
            (json!({"filter_allowed_clients": ["curl"]}), "among"),
            (json!({"no_such_setting": 1}), "unknown setting"),
            (json!({}), "no settings"),
        ] {
            let err = validate(&patch(bad.clone())).expect_err("invalid");
            assert!(err.contains(why), "{bad} gave {err}");
        }
    }
}
