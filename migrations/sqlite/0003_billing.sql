-- Billing: long-context price tiers, a price version per change, the package
-- each request was charged to, and when usage last changed (for pushes to nodes).
ALTER TABLE model_prices ADD COLUMN long_context_threshold INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_prices ADD COLUMN long_input_price INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_prices ADD COLUMN long_output_price INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_prices ADD COLUMN long_cache_write_5m_price INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_prices ADD COLUMN long_cache_write_1h_price INTEGER NOT NULL DEFAULT 0;
ALTER TABLE model_prices ADD COLUMN long_cache_read_price INTEGER NOT NULL DEFAULT 0;

-- Every price change is a row; its id is the price version billed with.
CREATE TABLE model_price_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL,
    input_price INTEGER NOT NULL DEFAULT 0,
    output_price INTEGER NOT NULL DEFAULT 0,
    cache_write_5m_price INTEGER NOT NULL DEFAULT 0,
    cache_write_1h_price INTEGER NOT NULL DEFAULT 0,
    cache_read_price INTEGER NOT NULL DEFAULT 0,
    long_context_threshold INTEGER NOT NULL DEFAULT 0,
    long_input_price INTEGER NOT NULL DEFAULT 0,
    long_output_price INTEGER NOT NULL DEFAULT 0,
    long_cache_write_5m_price INTEGER NOT NULL DEFAULT 0,
    long_cache_write_1h_price INTEGER NOT NULL DEFAULT 0,
    long_cache_read_price INTEGER NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT 0,
    changed_by TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE INDEX idx_price_history_model ON model_price_history (model, id);
INSERT INTO model_price_history (model, input_price, output_price, cache_write_5m_price, cache_write_1h_price,
    cache_read_price, changed_by, created_at)
    SELECT model, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price,
    'migration', updated_at FROM model_prices ORDER BY model;
UPDATE model_prices SET version = (SELECT MAX(h.id) FROM model_price_history h WHERE h.model = model_prices.model);

ALTER TABLE request_logs ADD COLUMN package_id INTEGER NULL;
CREATE INDEX idx_request_logs_package ON request_logs (package_id, created_at);
ALTER TABLE user_packages ADD COLUMN usage_reset_at TEXT NULL;
ALTER TABLE user_packages ADD COLUMN usage_updated_at TEXT NULL;
CREATE INDEX idx_user_packages_usage ON user_packages (usage_updated_at);
ALTER TABLE api_keys ADD COLUMN usage_updated_at TEXT NULL;
CREATE INDEX idx_api_keys_usage ON api_keys (usage_updated_at);
