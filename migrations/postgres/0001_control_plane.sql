-- Control plane: organisations, API keys (hashed) and dashboard users (argon2 hashes).
CREATE TABLE IF NOT EXISTS orgs (
    id         text PRIMARY KEY,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO orgs (id, name) VALUES ('default', 'Default') ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS api_keys (
    id           text PRIMARY KEY,
    org_id       text NOT NULL REFERENCES orgs(id),
    name         text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    key_prefix   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_org ON api_keys (org_id);

CREATE TABLE IF NOT EXISTS users (
    id            text PRIMARY KEY,
    org_id        text NOT NULL REFERENCES orgs(id),
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    role          text NOT NULL DEFAULT 'admin',
    created_at    timestamptz NOT NULL DEFAULT now()
);
