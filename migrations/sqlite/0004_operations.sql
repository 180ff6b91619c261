-- Operations: health-check results and OAuth usage on accounts, per-key
-- client-filter overrides, the audit log and the background-job lease.
ALTER TABLE accounts ADD COLUMN health_status TEXT NOT NULL DEFAULT 'unchecked';
ALTER TABLE accounts ADD COLUMN health_message TEXT NULL;
ALTER TABLE accounts ADD COLUMN health_checked_at TEXT NULL;
ALTER TABLE accounts ADD COLUMN usage_5h_utilization REAL NULL;
ALTER TABLE accounts ADD COLUMN usage_5h_resets_at TEXT NULL;
ALTER TABLE accounts ADD COLUMN usage_7d_utilization REAL NULL;
ALTER TABLE accounts ADD COLUMN usage_7d_resets_at TEXT NULL;

ALTER TABLE api_keys ADD COLUMN client_filter TEXT NULL;
ALTER TABLE api_keys ADD COLUMN allowed_clients TEXT NULL;

CREATE TABLE audit_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    actor_id INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    status INTEGER NOT NULL,
    detail TEXT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX idx_audit_logs_created ON audit_logs (created_at);

CREATE TABLE leader_leases (
    name TEXT NOT NULL PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
