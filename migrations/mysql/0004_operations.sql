-- Operations: health-check results and OAuth usage on accounts, per-key
-- client-filter overrides, the audit log and the background-job lease.
ALTER TABLE accounts ADD COLUMN health_status VARCHAR(16) NOT NULL DEFAULT 'unchecked';
ALTER TABLE accounts ADD COLUMN health_message VARCHAR(512) NULL;
ALTER TABLE accounts ADD COLUMN health_checked_at DATETIME(3) NULL;
ALTER TABLE accounts ADD COLUMN usage_5h_utilization DOUBLE NULL;
ALTER TABLE accounts ADD COLUMN usage_5h_resets_at DATETIME(3) NULL;
ALTER TABLE accounts ADD COLUMN usage_7d_utilization DOUBLE NULL;
ALTER TABLE accounts ADD COLUMN usage_7d_resets_at DATETIME(3) NULL;

ALTER TABLE api_keys ADD COLUMN client_filter VARCHAR(16) NULL;
ALTER TABLE api_keys ADD COLUMN allowed_clients TEXT NULL;

CREATE TABLE audit_logs (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    actor_id BIGINT NOT NULL,
    actor VARCHAR(128) NOT NULL,
    action VARCHAR(16) NOT NULL,
    target VARCHAR(512) NOT NULL,
    status INT NOT NULL,
    detail TEXT NULL,
    created_at DATETIME(3) NOT NULL,
    KEY idx_audit_logs_created (created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE leader_leases (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    holder VARCHAR(128) NOT NULL,
    expires_at DATETIME(3) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
