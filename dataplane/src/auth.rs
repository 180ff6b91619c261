//! Client authentication: the key from any header a client uses, checked
//! against the snapshot by its sha256. No database, no state store.
use std::sync::Arc;

use aiproxy_shared::keys::hash_key;
use http::{HeaderMap, StatusCode};

use crate::errors::RelayError;
use crate::snapshot::{KeyEntry, Snapshot, UserEntry};

/// The key a request carries: `x-api-key`, `Authorization: Bearer`,
/// `x-goog-api-key`, or `?key=`.
pub fn extract_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    header("x-api-key")
        .or_else(|| {
            header("authorization").and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
        })
        .or_else(|| header("x-goog-api-key"))
        .or_else(|| query_param(query?, "key"))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// The query string without the client's `key` parameter, for the upstream.
pub fn query_without_key(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("key="))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// A caller that passed authentication.
pub struct Caller<'s> {
    pub key: Arc<KeyEntry>,
    pub user: &'s UserEntry,
}

pub fn authenticate<'s>(
    snapshot: &'s Snapshot,
    headers: &HeaderMap,
    query: Option<&str>,
    now_ms: i64,
) -> Result<Caller<'s>, RelayError> {
    let plaintext = extract_key(headers, query).ok_or_else(RelayError::invalid_key)?;
    let key = snapshot
        .keys
        .get(&hash_key(plaintext))
        .ok_or_else(RelayError::invalid_key)?;
    if !key.active {
        return Err(RelayError::new(
            StatusCode::UNAUTHORIZED,
            "api_key_disabled",
            "api key disabled",
        ));
    }
    if key.expires_at_ms != 0 && key.expires_at_ms <= now_ms {
        return Err(RelayError::new(
            StatusCode::UNAUTHORIZED,
            "api_key_expired",
            "api key expired",
        ));
    }
    let user = snapshot
        .users
        .get(&key.user_id)
        .filter(|u| u.active)
        .ok_or_else(|| RelayError::new(StatusCode::FORBIDDEN, "user_disabled", "user disabled"))?;
    Ok(Caller {
        key: key.clone(),
        user,
    })
}

/// Whether a key may use `model` (an empty list allows all).
pub fn model_allowed(key: &KeyEntry, model: &str) -> bool {
    key.allowed_models.is_empty() || key.allowed_models.iter().any(|m| m == model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn key_from_every_place_clients_put_it() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(extract_key(&h, None), Some("k1"));
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer k2"));
        assert_eq!(extract_key(&h, None), Some("k2"));
        let mut h = HeaderMap::new();
        h.insert("x-goog-api-key", HeaderValue::from_static("k3"));
        assert_eq!(extract_key(&h, None), Some("k3"));
        assert_eq!(
            extract_key(&HeaderMap::new(), Some("alt=sse&key=k4")),
            Some("k4")
        );
        assert_eq!(extract_key(&HeaderMap::new(), Some("beta=true")), None);
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_eq!(extract_key(&h, None), None);
    }

    #[test]
    fn client_key_is_removed_from_the_upstream_query() {
        assert_eq!(
            query_without_key(Some("beta=true&key=secret")).as_deref(),
            Some("beta=true")
        );
        assert_eq!(query_without_key(Some("key=secret")), None);
        assert_eq!(query_without_key(None), None);
    }
}
