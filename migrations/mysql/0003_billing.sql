-- Billing: long-context price tiers, a price version per change, the package
-- each request was charged to, and when usage last changed (for pushes to nodes).
ALTER TABLE model_prices
    ADD COLUMN long_context_threshold BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN long_input_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    ADD COLUMN long_output_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    ADD COLUMN long_cache_write_5m_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    ADD COLUMN long_cache_write_1h_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    ADD COLUMN long_cache_read_price DECIMAL(20,10) NOT NULL DEFAULT 0;

-- Every price change is a row; its id is the price version billed with.
CREATE TABLE model_price_history (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    model VARCHAR(128) NOT NULL,
    input_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    output_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    cache_write_5m_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    cache_write_1h_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    cache_read_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    long_context_threshold BIGINT NOT NULL DEFAULT 0,
    long_input_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    long_output_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    long_cache_write_5m_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    long_cache_write_1h_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    long_cache_read_price DECIMAL(20,10) NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT 0,
    changed_by VARCHAR(128) NOT NULL DEFAULT '',
    created_at DATETIME(3) NOT NULL,
    KEY idx_price_history_model (model, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT INTO model_price_history (model, input_price, output_price, cache_write_5m_price, cache_write_1h_price,
    cache_read_price, changed_by, created_at)
    SELECT model, input_price, output_price, cache_write_5m_price, cache_write_1h_price, cache_read_price,
    'migration', updated_at FROM model_prices ORDER BY model;
UPDATE model_prices p JOIN (SELECT model, MAX(id) AS v FROM model_price_history GROUP BY model) h
    ON h.model = p.model SET p.version = h.v;

ALTER TABLE request_logs ADD COLUMN package_id BIGINT NULL, ADD KEY idx_request_logs_package (package_id, created_at);
ALTER TABLE user_packages ADD COLUMN usage_reset_at DATETIME(3) NULL, ADD COLUMN usage_updated_at DATETIME(3) NULL,
    ADD KEY idx_user_packages_usage (usage_updated_at);
ALTER TABLE api_keys ADD COLUMN usage_updated_at DATETIME(3) NULL, ADD KEY idx_api_keys_usage (usage_updated_at);
