-- Gateway controls on the proxy: a response cache shared by every llmlens process, token buckets for rate
-- limits, saved rate-limit policies, and hard budgets with their running spend.
CREATE TABLE IF NOT EXISTS cache_entries (
    key          text NOT NULL,
    bucket       integer NOT NULL,
    org_id       text NOT NULL,
    status       integer NOT NULL,
    headers      jsonb NOT NULL,
    body         bytea NOT NULL,
    stream       boolean NOT NULL,
    cost_nanos   bigint,
    model        text NOT NULL DEFAULT '',
    size_bytes   integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    hits         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (key, bucket)
);
CREATE INDEX IF NOT EXISTS cache_entries_expires ON cache_entries (expires_at);
CREATE INDEX IF NOT EXISTS cache_entries_created ON cache_entries (created_at);

CREATE TABLE IF NOT EXISTS rate_buckets (
    key        text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at double precision NOT NULL
);

CREATE TABLE IF NOT EXISTS rate_limit_policies (
    id         text PRIMARY KEY,
    org_id     text NOT NULL REFERENCES orgs(id),
    api_key_id text,
    name       text NOT NULL,
    policy     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS rate_limit_policies_org ON rate_limit_policies (org_id);

CREATE TABLE IF NOT EXISTS budgets (
    id           text PRIMARY KEY,
    org_id       text NOT NULL REFERENCES orgs(id),
    scope        text NOT NULL,          -- 'key', 'user' or 'property'
    scope_key    text NOT NULL DEFAULT '', -- the property name when scope = 'property'
    scope_value  text NOT NULL,          -- the key id, user id or property value
    period       text NOT NULL,          -- 'day' or 'month' (UTC)
    limit_nanos  bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS budgets_org ON budgets (org_id);

CREATE TABLE IF NOT EXISTS budget_spend (
    budget_id    text NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
    period_start timestamptz NOT NULL,
    spent_nanos  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period_start)
);
