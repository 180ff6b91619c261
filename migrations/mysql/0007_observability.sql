-- The upstream's own id for each request (Anthropic `request-id`, OpenAI
-- `x-request-id`, Google's `responseId`), for operators to quote to the
-- provider, and searchable.
ALTER TABLE request_logs ADD COLUMN upstream_request_id VARCHAR(128) NOT NULL DEFAULT '';
CREATE INDEX idx_request_logs_upstream_request_id ON request_logs (upstream_request_id);
