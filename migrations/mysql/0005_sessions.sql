-- Bumped when a user's password changes; admin tokens carry the generation
-- they were issued under, so the ones issued before a change stop working.
ALTER TABLE users ADD COLUMN token_generation INT NOT NULL DEFAULT 0;
