-- Scheduling: pick weights and dedicated bindings of accounts to keys and users.
ALTER TABLE accounts ADD COLUMN weight INT NOT NULL DEFAULT 1;
ALTER TABLE accounts ADD COLUMN bound_api_key_ids TEXT NULL;
ALTER TABLE accounts ADD COLUMN bound_user_ids TEXT NULL;
