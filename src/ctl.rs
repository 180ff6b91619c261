//! `aiproxy ctl`: the operator's command line over the management gRPC
//! service, with tables for people and `--json` for scripts; and the
//! declarative-configuration file format (YAML or JSON, `${ENV}` secrets).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aiproxy_proto::v1 as pb;
use aiproxy_proto::v1::management_service_client::ManagementServiceClient;
use aiproxy_shared::config::{Config, ConfigError, Secret};
use clap::Subcommand;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::Failure;

#[derive(Subcommand)]
pub enum CtlCommand {
    /// Upstream accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Users (operators and customers).
    #[command(subcommand)]
    Users(ResourceCommand),
    /// Relay API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// A user's packages.
    #[command(subcommand)]
    Packages(PackagesCommand),
    /// Runtime settings (health checks, client filter, relay TTLs, retention).
    #[command(subcommand)]
    Settings(SettingsCommand),
    /// Scheduling state shared by the data planes.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Rebuild the snapshot and push it to every data plane now.
    Refresh,
    /// The data planes and the snapshot version each applied.
    Nodes,
    /// Usage totals: --query group_by=user|key|model|account|day, from=, to=.
    Usage {
        #[arg(long = "query", value_name = "KEY=VALUE")]
        query: Vec<String>,
    },
    /// Recent admin changes, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Compare daily usage, keys, accounts and packages with the request
    /// logs; exits 1 when anything differs.
    Consistency,
    /// Create or update everything a YAML/JSON file declares (idempotent).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum AccountsCommand {
    List,
    Show {
        id: i64,
    },
    /// Create from a YAML/JSON file with the POST /api/v1/accounts body.
    Create {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Patch from a YAML/JSON file with the PATCH body.
    Update {
        id: i64,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    Delete {
        id: i64,
    },
    Enable {
        id: i64,
    },
    Disable {
        id: i64,
    },
    /// Error count to 0 and rate limit lifted; --enable also re-enables.
    Reset {
        /// The account; omit with --all.
        id: Option<i64>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        enable: bool,
    },
    /// Run the health check now.
    Test {
        id: i64,
    },
}

#[derive(Subcommand)]
pub enum ResourceCommand {
    List,
    Create {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    Update {
        id: i64,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    Delete {
        id: i64,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    List {
        #[arg(long)]
        user: Option<i64>,
    },
    /// Create from a file; the new key is printed once.
    Create {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    Update {
        id: i64,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    Delete {
        id: i64,
    },
}

#[derive(Subcommand)]
pub enum PackagesCommand {
    List {
        #[arg(long)]
        user: i64,
    },
    Create {
        #[arg(long)]
        user: i64,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    Update {
        id: i64,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Reset the usage of one package, or of all a user's packages.
    Reset {
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        package: Option<i64>,
        #[arg(long)]
        user: Option<i64>,
    },
}

#[derive(Subcommand)]
pub enum SettingsCommand {
    Get,
    /// `KEY=VALUE …`; VALUE is JSON (true, 5, "strict", ["claude-code"]) or
    /// plain text; `KEY=` returns the key to its default.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum CacheCommand {
    /// sessions | concurrency | unavailable | rate-limited
    List {
        kind: String,
        #[command(flatten)]
        filter: CacheFilter,
    },
    /// Clear everything of a kind, or what the filters select.
    Clear {
        kind: String,
        #[command(flatten)]
        filter: CacheFilter,
    },
}

#[derive(clap::Args)]
pub struct CacheFilter {
    /// Sessions of this API key.
    #[arg(long)]
    key: Option<i64>,
    /// One session hash.
    #[arg(long)]
    session: Option<String>,
    /// One account (unavailable, rate-limited, concurrency).
    #[arg(long)]
    account: Option<i64>,
    /// One user's concurrency.
    #[arg(long)]
    user: Option<i64>,
}

impl CacheFilter {
    fn query(&self, kind: &str) -> HashMap<String, String> {
        let mut q = HashMap::new();
        if let Some(k) = self.key {
            if kind == "concurrency" {
                q.insert("scope".into(), "key".into());
                q.insert("id".into(), k.to_string());
            } else {
                q.insert("key_id".into(), k.to_string());
            }
        }
        if let Some(s) = &self.session {
            q.insert("session".into(), s.clone());
        }
        if let Some(a) = self.account {
            if kind == "concurrency" {
                q.insert("scope".into(), "account".into());
                q.insert("id".into(), a.to_string());
            } else {
                q.insert("account_id".into(), a.to_string());
            }
        }
        if let Some(u) = self.user {
            q.insert("scope".into(), "user".into());
            q.insert("id".into(), u.to_string());
        }
        q
    }
}

/// The management token: configured, or the one the control plane
/// generated in the data directory.
fn admin_token(config: &Config) -> Result<Secret, Failure> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    let path = config.data_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(Secret::new(t.trim())),
        _ => Err(Failure::Config(ConfigError::Invalid(format!(
            "AIPROXY_ADMIN_TOKEN is not set and {} cannot be read: set the control plane's management token (or an admin's login token)",
            path.display()
        )))),
    }
}

/// Where a control plane without a configured management token keeps the one it generated.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

struct Ctl {
    client: ManagementServiceClient<Channel>,
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    json: bool,
}

impl Ctl {
    fn req<T>(&self, body: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(body);
        req.metadata_mut()
            .insert("authorization", self.bearer.clone());
        req
    }

    /// Calls one rpc with the bearer attached and reads the document it answers.
    async fn call<T>(
        &mut self,
        body: T,
        rpc: impl AsyncFnOnce(
            &mut ManagementServiceClient<Channel>,
            tonic::Request<T>,
        ) -> Result<tonic::Response<pb::Document>, tonic::Status>,
    ) -> Result<Value, Failure> {
        let request = self.req(body);
        doc(rpc(&mut self.client, request).await.map_err(failed)?)
    }
}

fn failed(status: tonic::Status) -> Failure {
    Failure::Run(anyhow::anyhow!("{}", status.message()))
}

fn doc(d: tonic::Response<pb::Document>) -> Result<Value, Failure> {
    serde_json::from_str(&d.into_inner().json)
        .map_err(|e| Failure::Run(anyhow::anyhow!("unreadable reply: {e}")))
}

pub async fn run(config: Config, json: bool, command: CtlCommand) -> Result<(), Failure> {
    // A file that does not read is reported before anything is contacted.
    let document = match &command {
        CtlCommand::Apply { file } => Some(read_document(file, &|name| std::env::var(name).ok())?),
        _ => None,
    };
    let token = admin_token(&config)?;
    let url = config.controlplane_url.clone().unwrap_or_else(|| {
        format!(
            "http://{}",
            crate::loopback_if_unspecified(config.listen.grpc)
        )
    });
    let ca = config
        .grpc_ca
        .as_deref()
        .map(Config::read_pem)
        .transpose()
        .map_err(Failure::Config)?;
    let channel = aiproxy_dataplane::control::endpoint(&url, ca.as_deref())
        .map_err(|e| Failure::Config(ConfigError::Invalid(e.to_string())))?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the control plane at {url}: {e}"))?;
    let client = ManagementServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let bearer = format!("Bearer {}", token.expose()).parse().map_err(|_| {
        Failure::Config(ConfigError::Invalid(
            "the admin token must be printable ASCII".into(),
        ))
    })?;
    let mut ctl = Ctl {
        client,
        bearer,
        json,
    };
    match command {
        CtlCommand::Accounts(c) => accounts(&mut ctl, c).await,
        CtlCommand::Users(c) => users(&mut ctl, c).await,
        CtlCommand::Keys(c) => keys(&mut ctl, c).await,
        CtlCommand::Packages(c) => packages(&mut ctl, c).await,
        CtlCommand::Settings(c) => settings(&mut ctl, c).await,
        CtlCommand::Cache(c) => cache(&mut ctl, c).await,
        CtlCommand::Refresh => {
            let v = ctl
                .call(pb::Empty {}, async |c, r| c.refresh_scheduler(r).await)
                .await?;
            show(&ctl, &v, |v| {
                println!("snapshot version {} pushed", v["version"])
            });
            Ok(())
        }
        CtlCommand::Nodes => {
            let v = ctl
                .call(pb::Empty {}, async |c, r| c.list_nodes(r).await)
                .await?;
            show(&ctl, &v, |v| {
                println!("snapshot version {}", v["snapshot_version"]);
                table(&v["items"], NODE_COLUMNS);
            });
            Ok(())
        }
        CtlCommand::Usage { query } => {
            let v = ctl
                .call(
                    pb::ListRequest {
                        query: pairs(&query)?,
                    },
                    async |c, r| c.usage_summary(r).await,
                )
                .await?;
            show(&ctl, &v, |v| table(&v["items"], USAGE_COLUMNS));
            Ok(())
        }
        CtlCommand::Audit { limit, actor } => {
            let mut query = HashMap::from([("limit".to_string(), limit.to_string())]);
            if let Some(a) = actor {
                query.insert("actor".into(), a);
            }
            let v = ctl
                .call(pb::ListRequest { query }, async |c, r| {
                    c.list_audit_logs(r).await
                })
                .await?;
            show(&ctl, &v, |v| table(&v["items"], AUDIT_COLUMNS));
            Ok(())
        }
        CtlCommand::Consistency => consistency(&mut ctl).await,
        CtlCommand::Apply { .. } => {
            let document = document.unwrap_or_default();
            let v = ctl
                .call(
                    pb::Document {
                        json: document.to_string(),
                    },
                    async |c, r| c.apply(r).await,
                )
                .await?;
            show(&ctl, &v, |v| table(&v["items"], APPLY_COLUMNS));
            Ok(())
        }
    }
}

type Columns = &'static [(&'static str, &'static str)];

const ACCOUNT_COLUMNS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("TYPE", "type"),
    ("ENABLED", "enabled"),
    ("STATUS", "status"),
    ("PRIO", "priority"),
    ("ERRORS", "consecutive_error_count"),
    ("HEALTH", "health_status"),
    ("RATE LIMITED UNTIL", "rate_limit_reset_at"),
    ("5H %", "usage_5h_utilization"),
    ("DISABLED REASON", "disabled_reason"),
];
const USER_COLUMNS: Columns = &[
    ("ID", "id"),
    ("USERNAME", "username"),
    ("ROLE", "role"),
    ("STATUS", "status"),
    ("PRICE RATE", "price_rate"),
    ("MAX CONC", "max_concurrency"),
];
const KEY_COLUMNS: Columns = &[
    ("ID", "id"),
    ("USER", "user_id"),
    ("NAME", "name"),
    ("PREFIX", "key_prefix"),
    ("BILLING", "billing_type"),
    ("STATUS", "status"),
    ("REQUESTS", "request_count"),
    ("COST USED", "cost_used"),
    ("FILTER", "client_filter"),
];
const PACKAGE_COLUMNS: Columns = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("TYPE", "type"),
    ("STATUS", "status"),
    ("DAILY", "daily_used"),
    ("WEEKLY", "weekly_used"),
    ("MONTHLY", "monthly_used"),
    ("QUOTA USED", "quota_used"),
    ("EXPIRES", "expires_at"),
];
const USAGE_COLUMNS: Columns = &[
    ("GROUP", "group"),
    ("REQUESTS", "requests"),
    ("INPUT", "input_tokens"),
    ("OUTPUT", "output_tokens"),
    ("COST", "cost"),
];
const AUDIT_COLUMNS: Columns = &[
    ("ID", "id"),
    ("WHEN", "created_at"),
    ("ACTOR", "actor"),
    ("ACTION", "action"),
    ("TARGET", "target"),
    ("STATUS", "status"),
];
const NODE_COLUMNS: Columns = &[
    ("NODE", "node_id"),
    ("APPLIED", "applied_version"),
    ("CURRENT", "current"),
    ("LAST SEEN", "last_seen"),
    ("LAST ERROR", "last_error"),
    ("LEFT OUT", "dropped"),
];
const APPLY_COLUMNS: Columns = &[("KIND", "kind"), ("NAME", "name"), ("ACTION", "action")];
const CHECK_COLUMNS: Columns = &[
    ("ACCOUNT", "account_id"),
    ("STATUS", "status"),
    ("HTTP", "http_status"),
    ("ERRORS", "consecutive_error_count"),
    ("DISABLED", "disabled"),
    ("ENDPOINT", "endpoint"),
    ("MESSAGE", "message"),
];

/// Prints `v` as JSON, or through `human`.
fn show(ctl: &Ctl, v: &Value, human: impl FnOnce(&Value)) {
    if ctl.json {
        println!("{v}");
    } else {
        human(v);
    }
}

/// A left-aligned table of `items` (an array of objects).
fn table<H: AsRef<str>, F: AsRef<str>>(items: &Value, columns: &[(H, F)]) {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .map(|a| {
            a.iter()
                .map(|item| {
                    columns
                        .iter()
                        .map(|(_, f)| cell(&item[f.as_ref()]))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(h.as_ref().len())
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|(h, _)| h.as_ref()).collect());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    if rows.is_empty() {
        println!("(none)");
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => {
            let s: String = s.chars().take(60).collect();
            s
        }
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let joined: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            joined.join("; ").chars().take(120).collect()
        }
        other => other.to_string(),
    }
}

/// One object as `key: value` lines.
fn fields(v: &Value) {
    if let Some(map) = v.as_object() {
        let width = map.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in map {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k:<width$}  {text}");
        }
    } else {
        println!("{v}");
    }
}

async fn accounts(ctl: &mut Ctl, c: AccountsCommand) -> Result<(), Failure> {
    let v = match c {
        AccountsCommand::List => {
            let v = ctl
                .call(pb::ListRequest::default(), async |c, r| {
                    c.list_accounts(r).await
                })
                .await?;
            show(ctl, &v, |v| table(&v["items"], ACCOUNT_COLUMNS));
            return Ok(());
        }
        AccountsCommand::Show { id } => {
            ctl.call(pb::IdRequest { id }, async |c, r| c.get_account(r).await)
                .await?
        }
        AccountsCommand::Create { file } => {
            let json = file_json(&file)?;
            ctl.call(pb::Document { json }, async |c, r| {
                c.create_account(r).await
            })
            .await?
        }
        AccountsCommand::Update { id, file } => {
            let json = file_json(&file)?;
            ctl.call(pb::UpdateRequest { id, json }, async |c, r| {
                c.update_account(r).await
            })
            .await?
        }
        AccountsCommand::Delete { id } => {
            ctl.call(pb::IdRequest { id }, async |c, r| c.delete_account(r).await)
                .await?;
            json!({ "deleted": id })
        }
        AccountsCommand::Enable { id } | AccountsCommand::Disable { id } => {
            let enabled = matches!(c, AccountsCommand::Enable { .. });
            ctl.call(pb::SetEnabledRequest { id, enabled }, async |c, r| {
                c.set_account_enabled(r).await
            })
            .await?
        }
        AccountsCommand::Reset { id, all, enable } => {
            let id = match (id, all) {
                (Some(id), false) => Some(id),
                (None, true) => None,
                _ => {
                    return Err(Failure::Run(anyhow::anyhow!("give an account id or --all")));
                }
            };
            ctl.call(pb::ResetAccountRequest { id, enable }, async |c, r| {
                c.reset_account(r).await
            })
            .await?
        }
        AccountsCommand::Test { id } => {
            let v = ctl
                .call(pb::IdRequest { id }, async |c, r| c.test_account(r).await)
                .await?;
            show(ctl, &v, |v| table(&json!([v]), CHECK_COLUMNS));
            return Ok(());
        }
    };
    show(ctl, &v, fields);
    Ok(())
}

async fn users(ctl: &mut Ctl, c: ResourceCommand) -> Result<(), Failure> {
    let v = match c {
        ResourceCommand::List => {
            let v = ctl
                .call(pb::ListRequest::default(), async |c, r| {
                    c.list_users(r).await
                })
                .await?;
            show(ctl, &v, |v| table(&v["items"], USER_COLUMNS));
            return Ok(());
        }
        ResourceCommand::Create { file } => {
            let json = file_json(&file)?;
            ctl.call(pb::Document { json }, async |c, r| c.create_user(r).await)
                .await?
        }
        ResourceCommand::Update { id, file } => {
            let json = file_json(&file)?;
            ctl.call(pb::UpdateRequest { id, json }, async |c, r| {
                c.update_user(r).await
            })
            .await?
        }
        ResourceCommand::Delete { id } => {
            ctl.call(pb::IdRequest { id }, async |c, r| c.delete_user(r).await)
                .await?;
            json!({ "deleted": id })
        }
    };
    show(ctl, &v, fields);
    Ok(())
}

async fn keys(ctl: &mut Ctl, c: KeysCommand) -> Result<(), Failure> {
    let v = match c {
        KeysCommand::List { user } => {
            let mut query = HashMap::new();
            if let Some(u) = user {
                query.insert("user_id".to_string(), u.to_string());
            }
            let v = ctl
                .call(pb::ListRequest { query }, async |c, r| c.list_keys(r).await)
                .await?;
            show(ctl, &v, |v| table(&v["items"], KEY_COLUMNS));
            return Ok(());
        }
        KeysCommand::Create { file } => {
            let json = file_json(&file)?;
            ctl.call(pb::Document { json }, async |c, r| c.create_key(r).await)
                .await?
        }
        KeysCommand::Update { id, file } => {
            let json = file_json(&file)?;
            ctl.call(pb::UpdateRequest { id, json }, async |c, r| {
                c.update_key(r).await
            })
            .await?
        }
        KeysCommand::Delete { id } => {
            ctl.call(pb::IdRequest { id }, async |c, r| c.delete_key(r).await)
                .await?;
            json!({ "deleted": id })
        }
    };
    show(ctl, &v, fields);
    Ok(())
}

async fn packages(ctl: &mut Ctl, c: PackagesCommand) -> Result<(), Failure> {
    let v = match c {
        PackagesCommand::List { user } => {
            let v = ctl
                .call(pb::IdRequest { id: user }, async |c, r| {
                    c.list_packages(r).await
                })
                .await?;
            show(ctl, &v, |v| table(&v["items"], PACKAGE_COLUMNS));
            return Ok(());
        }
        PackagesCommand::Create { user, file } => {
            let json = file_json(&file)?;
            ctl.call(pb::UpdateRequest { id: user, json }, async |c, r| {
                c.create_package(r).await
            })
            .await?
        }
        PackagesCommand::Update { id, file } => {
            let json = file_json(&file)?;
            ctl.call(pb::UpdateRequest { id, json }, async |c, r| {
                c.update_package(r).await
            })
            .await?
        }
        PackagesCommand::Reset { package, user } => {
            let target = match (package, user) {
                (Some(id), None) => pb::reset_packages_request::Target::PackageId(id),
                (None, Some(id)) => pb::reset_packages_request::Target::UserId(id),
                _ => {
                    return Err(Failure::Run(anyhow::anyhow!(
                        "give exactly one of --package and --user"
                    )));
                }
            };
            ctl.call(
                pb::ResetPackagesRequest {
                    target: Some(target),
                },
                async |c, r| c.reset_packages(r).await,
            )
            .await?
        }
    };
    show(ctl, &v, fields);
    Ok(())
}

async fn settings(ctl: &mut Ctl, c: SettingsCommand) -> Result<(), Failure> {
    let v = match c {
        SettingsCommand::Get => {
            ctl.call(pb::Empty {}, async |c, r| c.get_settings(r).await)
                .await?
        }
        SettingsCommand::Set { pairs } => {
            let mut patch = serde_json::Map::new();
            for pair in pairs {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| Failure::Run(anyhow::anyhow!("{pair}: expected KEY=VALUE")))?;
                let value = if v.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()))
                };
                patch.insert(k.to_string(), value);
            }
            let json = Value::Object(patch).to_string();
            ctl.call(pb::Document { json }, async |c, r| {
                c.update_settings(r).await
            })
            .await?
        }
    };
    show(ctl, &v, |v| {
        let stored: Vec<&str> = v["stored"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let rows: Vec<Value> = v["specs"]
            .as_array()
            .map(|specs| {
                specs
                    .iter()
                    .map(|s| {
                        let key = s["key"].as_str().unwrap_or_default();
                        json!({
                            "key": key,
                            "value": v["settings"][key],
                            "source": if stored.contains(&key) { "set" } else { "default" },
                            "help": s["help"],
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        table(
            &Value::Array(rows),
            &[
                ("SETTING", "key"),
                ("VALUE", "value"),
                ("SOURCE", "source"),
                ("MEANING", "help"),
            ],
        );
    });
    Ok(())
}

async fn cache(ctl: &mut Ctl, c: CacheCommand) -> Result<(), Failure> {
    let (kind, filter, clear) = match c {
        CacheCommand::List { kind, filter } => (kind, filter, false),
        CacheCommand::Clear { kind, filter } => (kind, filter, true),
    };
    let request = pb::CacheRequest {
        query: filter.query(&kind),
        kind: kind.clone(),
    };
    let v = if clear {
        ctl.call(request, async |c, r| c.clear_cache(r).await)
            .await?
    } else {
        ctl.call(request, async |c, r| c.list_cache(r).await)
            .await?
    };
    show(ctl, &v, |v| {
        if clear {
            println!("cleared {}", v["cleared"]);
        } else if kind == "concurrency" {
            for scope in ["accounts", "users", "keys"] {
                println!("{scope}:");
                let columns: Columns = match scope {
                    "accounts" => &[
                        ("ACCOUNT", "account_id"),
                        ("NAME", "name"),
                        ("IN USE", "in_use"),
                        ("LIMIT", "max_concurrency"),
                    ],
                    "users" => &[("USER", "user_id"), ("IN USE", "in_use")],
                    _ => &[("KEY", "key_id"), ("IN USE", "in_use")],
                };
                table(&v[scope], columns);
            }
        } else {
            let items = &v["items"];
            let columns: Vec<(String, String)> = items
                .get(0)
                .and_then(Value::as_object)
                .map(|o| o.keys().map(|k| (k.to_uppercase(), k.clone())).collect())
                .unwrap_or_default();
            table(items, &columns);
        }
    });
    Ok(())
}

async fn consistency(ctl: &mut Ctl) -> Result<(), Failure> {
    let report = ctl
        .client
        .check_consistency(ctl.req(pb::ConsistencyRequest {}))
        .await
        .map_err(|e| anyhow::anyhow!("consistency check failed: {}", e.message()))?
        .into_inner();
    if ctl.json {
        let differences: Vec<_> = report
            .differences
            .iter()
            .map(|d| {
                json!({"table": d.table, "row": d.row, "field": d.field,
                       "expected": d.expected, "actual": d.actual})
            })
            .collect();
        println!(
            "{}",
            json!({"clean": report.clean, "request_logs": report.request_logs,
                   "differences": differences,
                   "complete_since": (!report.complete_since.is_empty()).then_some(&report.complete_since)})
        );
    } else if report.clean && !report.complete_since.is_empty() {
        println!(
            "consistent: {} request logs agree with daily usage from {} on (older logs were deleted past their retention, so lifetime totals are not compared)",
            report.request_logs, report.complete_since
        );
    } else if report.clean {
        println!(
            "consistent: {} request logs agree with daily usage, keys, accounts and packages",
            report.request_logs
        );
    } else {
        println!(
            "{:<14} {:<40} {:<16} {:>22} {:>22}",
            "TABLE", "ROW", "FIELD", "FROM LOGS", "STORED"
        );
        for d in &report.differences {
            println!(
                "{:<14} {:<40} {:<16} {:>22} {:>22}",
                d.table, d.row, d.field, d.expected, d.actual
            );
        }
    }
    if !report.clean {
        return Err(Failure::Run(anyhow::anyhow!(
            "{} differences",
            report.differences.len()
        )));
    }
    Ok(())
}

/// `KEY=VALUE` arguments as a query map.
fn pairs(args: &[String]) -> Result<HashMap<String, String>, Failure> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Failure::Run(anyhow::anyhow!("{a}: expected KEY=VALUE")))
        })
        .collect()
}

/// A request body from a YAML/JSON file, secrets from this process's environment.
fn file_json(file: &Path) -> Result<String, Failure> {
    Ok(read_document(file, &|name| std::env::var(name).ok())?.to_string())
}

/// Reads a YAML (or JSON) file, replacing `${NAME}` with the environment
/// variable `NAME` (a missing variable is an error, never an empty secret).
pub fn read_document(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Value, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    parse_document(&text, env).map_err(|e| Failure::Run(anyhow::anyhow!("{}: {e}", path.display())))
}

pub fn parse_document(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Value, String> {
    let value: Value = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    expand(value, env)
}

/// Replaces `${NAME}` in every string of `v`.
fn expand(v: Value, env: &dyn Fn(&str) -> Option<String>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(expand_str(&s, env)?),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| expand(i, env))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| Ok((k, expand(v, env)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other,
    })
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let name = &after[..end];
        let valid =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!("${{{name}}} is not an environment variable name"));
        }
        let value = env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_read_yaml_and_take_secrets_from_the_environment() {
        let env = |name: &str| (name == "CLAUDE_KEY").then(|| "sk-ant-xyz".to_string());
        let doc = parse_document(
            "accounts:\n  - name: main\n    type: claude-api\n    credentials:\n      api_key: ${CLAUDE_KEY}\n    priority: 10\n",
            &env,
        )
        .expect("parses");
        assert_eq!(doc["accounts"][0]["credentials"]["api_key"], "sk-ant-xyz");
        assert_eq!(doc["accounts"][0]["priority"], 10);
        let err = parse_document("users:\n  - username: a\n    password: ${MISSING}\n", &env)
            .expect_err("missing variable");
        assert!(err.contains("MISSING is not set"), "{err}");
        assert!(parse_document("x: ${bad name}", &env).is_err());
        assert_eq!(
            parse_document("{\"a\": \"p-${CLAUDE_KEY}-s\"}", &env).expect("json is yaml")["a"],
            "p-sk-ant-xyz-s"
        );
    }
}
