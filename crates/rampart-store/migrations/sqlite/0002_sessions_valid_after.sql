-- Sessions (access tokens issued, refresh tokens stored) before this instant are void: set when a
-- user's password changes or the user is disabled.
ALTER TABLE users ADD COLUMN sessions_valid_after INTEGER;
