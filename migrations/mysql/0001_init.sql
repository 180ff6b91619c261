-- Core schema: users, packages, keys, accounts, usage, settings, prices.
CREATE TABLE users (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username VARCHAR(64) NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    role VARCHAR(16) NOT NULL DEFAULT 'user',
    status VARCHAR(16) NOT NULL DEFAULT 'active',
    price_rate DECIMAL(20,10) NOT NULL DEFAULT 1,
    email VARCHAR(255) NULL,
    max_concurrency INT NOT NULL DEFAULT 0,
    created_at DATETIME(3) NOT NULL,
    updated_at DATETIME(3) NOT NULL,
    UNIQUE KEY uk_users_username (username)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE user_packages (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    name VARCHAR(128) NOT NULL,
    type VARCHAR(16) NOT NULL,
    status VARCHAR(16) NOT NULL DEFAULT 'active',
    daily_quota DECIMAL(20,10) NULL,
    weekly_quota DECIMAL(20,10) NULL,
    monthly_quota DECIMAL(20,10) NULL,
    daily_used DECIMAL(20,10) NOT NULL DEFAULT 0,
    weekly_used DECIMAL(20,10) NOT NULL DEFAULT 0,
    monthly_used DECIMAL(20,10) NOT NULL DEFAULT 0,
    quota_total DECIMAL(20,10) NULL,
    quota_used DECIMAL(20,10) NOT NULL DEFAULT 0,
    last_reset_day DATE NULL,
    last_reset_week INT NULL,
    last_reset_month VARCHAR(7) NULL,
    allowed_models TEXT NULL,
    starts_at DATETIME(3) NULL,
    expires_at DATETIME(3) NULL,
    created_at DATETIME(3) NOT NULL,
    updated_at DATETIME(3) NOT NULL,
    KEY idx_user_packages_user (user_id, status)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE api_keys (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    name VARCHAR(128) NOT NULL,
    key_hash CHAR(64) NOT NULL,
    key_prefix VARCHAR(32) NOT NULL,
    billing_type VARCHAR(16) NOT NULL DEFAULT 'package',
    status VARCHAR(16) NOT NULL DEFAULT 'active',
    request_count BIGINT NOT NULL DEFAULT 0,
    cost_used DECIMAL(20,10) NOT NULL DEFAULT 0,
    cost_limit DECIMAL(20,10) NULL,
    rate_limit INT NOT NULL DEFAULT 0,
    allowed_models TEXT NULL,
    max_concurrency INT NOT NULL DEFAULT 0,
    expires_at DATETIME(3) NULL,
    last_used_at DATETIME(3) NULL,
    created_at DATETIME(3) NOT NULL,
    updated_at DATETIME(3) NOT NULL,
    UNIQUE KEY uk_api_keys_hash (key_hash),
    KEY idx_api_keys_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE accounts (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(128) NOT NULL,
    type VARCHAR(32) NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    status VARCHAR(16) NOT NULL DEFAULT 'valid',
    credentials TEXT NOT NULL,
    base_url VARCHAR(512) NULL,
    proxy_url VARCHAR(512) NULL,
    priority INT NOT NULL DEFAULT 50,
    max_concurrency INT NOT NULL DEFAULT 0,
    rate_limit_reset_at DATETIME(3) NULL,
    total_cost DECIMAL(20,10) NOT NULL DEFAULT 0,
    current_load INT NOT NULL DEFAULT 0,
    daily_requests BIGINT NOT NULL DEFAULT 0,
    daily_requests_date DATE NULL,
    consecutive_error_count INT NOT NULL DEFAULT 0,
    disabled_reason VARCHAR(512) NULL,
    last_used_at DATETIME(3) NULL,
    created_at DATETIME(3) NOT NULL,
    updated_at DATETIME(3) NOT NULL,
    KEY idx_accounts_type (type, enabled)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE request_logs (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    request_id CHAR(36) NOT NULL,
    user_id BIGINT NOT NULL,
    api_key_id BIGINT NOT NULL,
    account_id BIGINT NULL,
    node_id VARCHAR(128) NOT NULL DEFAULT '',
    model VARCHAR(128) NOT NULL,
    platform VARCHAR(16) NOT NULL,
    endpoint VARCHAR(128) NOT NULL,
    status_code INT NOT NULL,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_creation_tokens BIGINT NOT NULL DEFAULT 0,
    cache_creation_1h_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    upstream_cost DECIMAL(20,10) NOT NULL DEFAULT 0,
    cost DECIMAL(20,10) NOT NULL DEFAULT 0,
    price_version BIGINT NOT NULL DEFAULT 0,
    duration_ms INT NOT NULL DEFAULT 0,
    ttfb_ms INT NOT NULL DEFAULT 0,
    stream BOOLEAN NOT NULL DEFAULT FALSE,
    session_hash VARCHAR(64) NOT NULL DEFAULT '',
    error_class VARCHAR(64) NOT NULL DEFAULT '',
    usage_source VARCHAR(16) NOT NULL DEFAULT 'reported',
    created_at DATETIME(3) NOT NULL,
    UNIQUE KEY uk_request_logs_request_id (request_id),
    KEY idx_request_logs_created (created_at),
    KEY idx_request_logs_user (user_id, created_at),
    KEY idx_request_logs_key (api_key_id, created_at),
    KEY idx_request_logs_account (account_id, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE daily_usages (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    date DATE NOT NULL,
    model VARCHAR(128) NOT NULL,
    request_count BIGINT NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_creation_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    upstream_cost DECIMAL(20,10) NOT NULL DEFAULT 0,
    total_cost DECIMAL(20,10) NOT NULL DEFAULT 0,
    UNIQUE KEY uk_daily_usages (user_id, date, model)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE system_configs (
    `key` VARCHAR(128) NOT NULL PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at DATETIME(3) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE model_prices (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    model VARCHAR(128) NOT NULL,
    input_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    output_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    cache_write_5m_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    cache_write_1h_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    cache_read_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 1,
    updated_at DATETIME(3) NOT NULL,
    UNIQUE KEY uk_model_prices_model (model)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- Version of everything the data-plane snapshot carries; bumped in the
-- same transaction as any change to it.
CREATE TABLE snapshot_version (
    id INT NOT NULL PRIMARY KEY,
    version BIGINT NOT NULL
) ENGINE=InnoDB;

INSERT INTO snapshot_version (id, version) VALUES (1, 1);
