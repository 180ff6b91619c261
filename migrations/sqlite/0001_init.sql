-- Core schema: users, packages, keys, accounts, usage, settings, prices.
-- USD amounts are INTEGER units of 1e-10 USD here (exact sums); MySQL uses DECIMAL(20,10).
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'user',
    status TEXT NOT NULL DEFAULT 'active',
    price_rate INTEGER NOT NULL DEFAULT 10000000000,
    email TEXT NULL,
    max_concurrency INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE user_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    daily_quota INTEGER NULL,
    weekly_quota INTEGER NULL,
    monthly_quota INTEGER NULL,
    daily_used INTEGER NOT NULL DEFAULT 0,
    weekly_used INTEGER NOT NULL DEFAULT 0,
    monthly_used INTEGER NOT NULL DEFAULT 0,
    quota_total INTEGER NULL,
    quota_used INTEGER NOT NULL DEFAULT 0,
    last_reset_day TEXT NULL,
    last_reset_week INTEGER NULL,
    last_reset_month TEXT NULL,
    allowed_models TEXT NULL,
    starts_at TEXT NULL,
    expires_at TEXT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX idx_user_packages_user ON user_packages (user_id, status);

CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    billing_type TEXT NOT NULL DEFAULT 'package',
    status TEXT NOT NULL DEFAULT 'active',
    request_count INTEGER NOT NULL DEFAULT 0,
    cost_used INTEGER NOT NULL DEFAULT 0,
    cost_limit INTEGER NULL,
    rate_limit INTEGER NOT NULL DEFAULT 0,
    allowed_models TEXT NULL,
    max_concurrency INTEGER NOT NULL DEFAULT 0,
    expires_at TEXT NULL,
    last_used_at TEXT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX idx_api_keys_user ON api_keys (user_id);

CREATE TABLE accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT 1,
    status TEXT NOT NULL DEFAULT 'valid',
    credentials TEXT NOT NULL,
    base_url TEXT NULL,
    proxy_url TEXT NULL,
    priority INTEGER NOT NULL DEFAULT 50,
    max_concurrency INTEGER NOT NULL DEFAULT 0,
    rate_limit_reset_at TEXT NULL,
    total_cost INTEGER NOT NULL DEFAULT 0,
    current_load INTEGER NOT NULL DEFAULT 0,
    daily_requests INTEGER NOT NULL DEFAULT 0,
    daily_requests_date TEXT NULL,
    consecutive_error_count INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT NULL,
    last_used_at TEXT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX idx_accounts_type ON accounts (type, enabled);

CREATE TABLE request_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    user_id INTEGER NOT NULL,
    api_key_id INTEGER NOT NULL,
    account_id INTEGER NULL,
    node_id TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    platform TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_1h_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    upstream_cost INTEGER NOT NULL DEFAULT 0,
    cost INTEGER NOT NULL DEFAULT 0,
    price_version INTEGER NOT NULL DEFAULT 0,
    duration_ms INTEGER NOT NULL DEFAULT 0,
    ttfb_ms INTEGER NOT NULL DEFAULT 0,
    stream BOOLEAN NOT NULL DEFAULT 0,
    session_hash TEXT NOT NULL DEFAULT '',
    error_class TEXT NOT NULL DEFAULT '',
    usage_source TEXT NOT NULL DEFAULT 'reported',
    created_at TEXT NOT NULL
);
CREATE INDEX idx_request_logs_created ON request_logs (created_at);
CREATE INDEX idx_request_logs_user ON request_logs (user_id, created_at);
CREATE INDEX idx_request_logs_key ON request_logs (api_key_id, created_at);
CREATE INDEX idx_request_logs_account ON request_logs (account_id, created_at);

CREATE TABLE daily_usages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    date TEXT NOT NULL,
    model TEXT NOT NULL,
    request_count INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_creation_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    upstream_cost INTEGER NOT NULL DEFAULT 0,
    total_cost INTEGER NOT NULL DEFAULT 0,
    UNIQUE (user_id, date, model)
);

CREATE TABLE system_configs (
    `key` TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE model_prices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL UNIQUE,
    input_price INTEGER NOT NULL DEFAULT 0,
    output_price INTEGER NOT NULL DEFAULT 0,
    cache_write_5m_price INTEGER NOT NULL DEFAULT 0,
    cache_write_1h_price INTEGER NOT NULL DEFAULT 0,
    cache_read_price INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL
);

CREATE TABLE snapshot_version (
    id INTEGER NOT NULL PRIMARY KEY,
    version INTEGER NOT NULL
);

INSERT INTO snapshot_version (id, version) VALUES (1, 1);
