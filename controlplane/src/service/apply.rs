//! Declarative configuration: creates what is missing and updates what
//! exists — settings, prices, users with their packages and keys, accounts —
//! matched by name, through the same operations (and so the same
//! validation) as one change at a time. Applying a document twice changes
//! nothing the second time.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::{Actor, ServiceError, ServiceResult, Services};

/// A declarative configuration. Each item is the body its own route takes
/// (`PUT /prices/{model}`, `POST /users`, `POST /users/{id}/packages`,
/// `POST /api-keys`, `POST /accounts`), named by its `model`, `username` or
/// `name`; a user item may list its `packages` and `api_keys`.
#[derive(Debug, Deserialize, Serialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Document {
    #[serde(default)]
    pub settings: Option<Map<String, Value>>,
    #[serde(default)]
    pub prices: Vec<Map<String, Value>>,
    #[serde(default)]
    pub users: Vec<Map<String, Value>>,
    #[serde(default)]
    pub accounts: Vec<Map<String, Value>>,
}

/// What happened to each item, in order.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Report {
    /// Items applied.
    pub applied: usize,
    pub items: Vec<ReportItem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReportItem {
    /// `settings`, `price`, `user`, `package`, `api_key` or `account`.
    pub kind: &'static str,
    pub name: String,
    /// `created` or `updated`.
    pub action: &'static str,
}

impl Report {
    fn note(&mut self, kind: &'static str, name: &str, action: &'static str) {
        self.items.push(ReportItem {
            kind,
            name: name.to_string(),
            action,
        });
        self.applied = self.items.len();
    }
}

impl Services {
    /// Applies `doc` item by item; on a failure the earlier items stay
    /// applied, and the error names the item.
    pub async fn apply(&self, actor: &Actor, doc: Document) -> ServiceResult<Report> {
        actor.require_admin()?;
        let mut report = Report::default();
        let outcome = apply_all(self, actor, doc, &mut report).await;
        let done = report.items.len();
        match outcome {
            Ok(()) => {
                tracing::info!(items = done, user = %actor.name(), "declarative configuration applied");
                Ok(report)
            }
            // Earlier items stay applied; the document can be fixed and re-applied.
            Err((item, e)) => Err(match e {
                ServiceError::BadRequest(m) | ServiceError::Conflict(m) => {
                    ServiceError::BadRequest(format!("{item}: {m} ({done} earlier items applied)"))
                }
                ServiceError::NotFound(m)
                | ServiceError::Forbidden(m)
                | ServiceError::Unauthorized(m) => {
                    ServiceError::BadRequest(format!("{item}: {m} ({done} earlier items applied)"))
                }
                other => other,
            }),
        }
    }
}

type ItemResult = Result<(), (String, ServiceError)>;

async fn apply_all(
    services: &Services,
    actor: &Actor,
    doc: Document,
    report: &mut Report,
) -> ItemResult {
    if let Some(settings) = doc.settings {
        services
            .update_settings(actor, super::settings::SettingsPatch(settings))
            .await
            .map_err(|e| ("settings".to_string(), e))?;
        report.note("settings", "settings", "updated");
    }
    for price in doc.prices {
        let mut price = price;
        let model = take_name(&mut price, "model").map_err(|e| ("prices".to_string(), e))?;
        let item = format!("price {model}");
        let input = parse(price).map_err(|e| (item.clone(), e))?;
        services
            .set_price(actor, &model, input)
            .await
            .map_err(|e| (item, e))?;
        report.note("price", &model, "updated");
    }
    for user in doc.users {
        apply_user(services, actor, user, report).await?;
    }
    for account in doc.accounts {
        apply_account(services, actor, account, report).await?;
    }
    Ok(())
}

async fn apply_user(
    services: &Services,
    actor: &Actor,
    mut user: Map<String, Value>,
    report: &mut Report,
) -> ItemResult {
    let username = take_name(&mut user, "username").map_err(|e| ("users".to_string(), e))?;
    let item = format!("user {username}");
    let fail = |e| (item.clone(), e);
    let packages = take_list(&mut user, "packages").map_err(fail)?;
    let keys = take_list(&mut user, "api_keys").map_err(fail)?;
    let existing = services
        .store
        .find_user_by_name(&username)
        .await
        .map_err(|e| fail(e.into()))?;
    let user_id = match existing {
        None => {
            user.insert("username".into(), json!(username));
            let created = services
                .create_user(actor, parse(user).map_err(fail)?)
                .await
                .map_err(fail)?;
            report.note("user", &username, "created");
            created.id
        }
        Some(current) => {
            // A password that still matches is left alone (hashing anew
            // each time would change the row on every apply).
            if let Some(password) = user.get("password").and_then(Value::as_str) {
                let (password, hash) = (password.to_string(), current.password_hash.clone());
                let same = services
                    .login_gate
                    .run(move || crate::crypto::verify_password(&password, &hash))
                    .await
                    .map_err(fail)?;
                if same {
                    user.remove("password");
                }
            }
            if !user.is_empty() {
                services
                    .update_user(actor, current.id, parse(user).map_err(fail)?)
                    .await
                    .map_err(fail)?;
            }
            report.note("user", &username, "updated");
            current.id
        }
    };
    for package in packages {
        apply_package(services, actor, user_id, &username, package, report).await?;
    }
    for key in keys {
        apply_key(services, actor, user_id, &username, key, report).await?;
    }
    Ok(())
}

async fn apply_package(
    services: &Services,
    actor: &Actor,
    user_id: i64,
    username: &str,
    mut package: Map<String, Value>,
    report: &mut Report,
) -> ItemResult {
    let name =
        take_name(&mut package, "name").map_err(|e| (format!("user {username} packages"), e))?;
    let item = format!("package {username}/{name}");
    let fail = |e| (item.clone(), e);
    let existing = services
        .store
        .list_packages(Some(user_id))
        .await
        .map_err(|e| fail(e.into()))?
        .into_iter()
        .find(|p| p.name == name);
    match existing {
        None => {
            package.insert("name".into(), json!(name));
            services
                .create_package(actor, user_id, parse(package).map_err(fail)?)
                .await
                .map_err(fail)?;
            report.note("package", &format!("{username}/{name}"), "created");
        }
        Some(current) => {
            if let Some(kind) = package.remove("type")
                && kind.as_str() != Some(current.kind.as_str())
            {
                return Err(fail(ServiceError::BadRequest(format!(
                    "type cannot change from {} (delete the package first)",
                    current.kind
                ))));
            }
            services
                .update_package(actor, current.id, parse(package).map_err(fail)?)
                .await
                .map_err(fail)?;
            report.note("package", &format!("{username}/{name}"), "updated");
        }
    }
    Ok(())
}

async fn apply_key(
    services: &Services,
    actor: &Actor,
    user_id: i64,
    username: &str,
    mut key: Map<String, Value>,
    report: &mut Report,
) -> ItemResult {
    let name = take_name(&mut key, "name").map_err(|e| (format!("user {username} api_keys"), e))?;
    let item = format!("api key {username}/{name}");
    let fail = |e| (item.clone(), e);
    let existing = services
        .store
        .list_api_keys(Some(user_id))
        .await
        .map_err(|e| fail(e.into()))?
        .into_iter()
        .find(|k| k.name == name);
    let plaintext = key.remove("key");
    match existing {
        None => {
            key.insert("name".into(), json!(name));
            key.insert("user_id".into(), json!(user_id));
            if let Some(plaintext) = plaintext {
                key.insert("key".into(), plaintext);
            }
            services
                .create_key(actor, parse(key).map_err(fail)?)
                .await
                .map_err(fail)?;
            report.note("api_key", &format!("{username}/{name}"), "created");
        }
        Some(current) => {
            if let Some(plaintext) = plaintext.as_ref().and_then(Value::as_str)
                && aiproxy_shared::keys::hash_key_hex(plaintext) != current.key_hash
            {
                return Err(fail(ServiceError::BadRequest(
                    "the key exists with a different value; a key's value never changes (delete it to replace it)".into(),
                )));
            }
            if !key.is_empty() {
                services
                    .update_key(actor, current.id, parse(key).map_err(fail)?)
                    .await
                    .map_err(fail)?;
            }
            report.note("api_key", &format!("{username}/{name}"), "updated");
        }
    }
    Ok(())
}

async fn apply_account(
    services: &Services,
    actor: &Actor,
    mut account: Map<String, Value>,
    report: &mut Report,
) -> ItemResult {
    let name = take_name(&mut account, "name").map_err(|e| ("accounts".to_string(), e))?;
    let item = format!("account {name}");
    let fail = |e| (item.clone(), e);
    let matching: Vec<_> = services
        .store
        .list_accounts()
        .await
        .map_err(|e| fail(e.into()))?
        .into_iter()
        .filter(|a| a.name == name)
        .collect();
    match matching.as_slice() {
        [] => {
            account.insert("name".into(), json!(name));
            services
                .create_account(actor, parse(account).map_err(fail)?)
                .await
                .map_err(fail)?;
            report.note("account", &name, "created");
        }
        [current] => {
            if let Some(kind) = account.remove("type")
                && kind.as_str() != Some(current.kind.as_str())
            {
                return Err(fail(ServiceError::BadRequest(format!(
                    "type cannot change from {} (delete the account first)",
                    current.kind
                ))));
            }
            // OAuth tokens rotate after creation: the file's would undo that.
            // Other credentials are written only when they changed.
            let oauth = current.kind.is_oauth();
            let unchanged = || {
                let stored: BTreeMap<String, String> = services
                    .sealer
                    .open(&current.credentials_sealed)
                    .ok()
                    .and_then(|plain| serde_json::from_slice(&plain).ok())
                    .unwrap_or_default();
                account
                    .get("credentials")
                    .and_then(Value::as_object)
                    .is_some_and(|given| {
                        given
                            .iter()
                            .all(|(k, v)| v.as_str() == stored.get(k).map(String::as_str))
                    })
            };
            if oauth || unchanged() {
                account.remove("credentials");
            }
            services
                .update_account(actor, current.id, parse(account).map_err(fail)?)
                .await
                .map_err(fail)?;
            report.note("account", &name, "updated");
        }
        _ => {
            return Err(fail(ServiceError::BadRequest(
                "several accounts have this name; rename them so each is unique".into(),
            )));
        }
    }
    Ok(())
}

/// Removes and returns the naming field of an item.
fn take_name(item: &mut Map<String, Value>, field: &str) -> ServiceResult<String> {
    match item.remove(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(ServiceError::BadRequest(format!(
            "every item needs a non-empty {field}"
        ))),
    }
}

fn take_list(item: &mut Map<String, Value>, field: &str) -> ServiceResult<Vec<Map<String, Value>>> {
    match item.remove(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v).map_err(|e| {
            ServiceError::BadRequest(format!("{field} must be a list of objects: {e}"))
        }),
    }
}

/// Reads an item as a route's request body, with that body's validation.
fn parse<T: serde::de::DeserializeOwned>(item: Map<String, Value>) -> ServiceResult<T> {
    serde_json::from_value(Value::Object(item)).map_err(|e| ServiceError::BadRequest(e.to_string()))
}
