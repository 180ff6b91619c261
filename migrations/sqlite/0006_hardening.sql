-- User names are matched by one normalised form (trimmed, lower case) on
-- every database, compared byte for byte; filled in by the control plane.
ALTER TABLE users ADD COLUMN username_key TEXT NULL;
CREATE UNIQUE INDEX uk_users_username_key ON users (username_key);

-- A key an administrator disabled stays disabled until an administrator
-- enables it.
ALTER TABLE api_keys ADD COLUMN disabled_by_admin BOOLEAN NOT NULL DEFAULT 0;

-- Operator-supplied keys show four characters, as generated ones do.
UPDATE api_keys SET key_prefix = substr(key_prefix, 1, 4) WHERE key_prefix NOT LIKE 'sk-aiproxy-%';
