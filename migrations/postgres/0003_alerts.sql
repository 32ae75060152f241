-- Threshold alerts: rules per org, their state per group, a history of fired/resolved episodes, and an outbox of
-- notifications. A state change and its notifications commit in one transaction, so a restart neither loses a
-- firing alert nor sends it twice; the outbox is drained (with retries) after each evaluation.
CREATE TABLE IF NOT EXISTS alert_rules (
    id               text PRIMARY KEY,
    org_id           text NOT NULL REFERENCES orgs(id),
    name             text NOT NULL,
    metric           text NOT NULL,
    window_s         integer NOT NULL,
    comparator       text NOT NULL,
    threshold        double precision NOT NULL,
    min_requests     integer NOT NULL DEFAULT 0,
    filter           jsonb NOT NULL DEFAULT '{}',
    group_by         text NOT NULL DEFAULT '',    -- '', 'user', 'model', 'provider' or 'property.<key>'
    budget_id        text REFERENCES budgets(id) ON DELETE CASCADE,  -- metric 'budget_used_pct' only
    channels         jsonb NOT NULL,
    cooldown_s       integer NOT NULL DEFAULT 300,
    paused           boolean NOT NULL DEFAULT false,
    webhook_secret   text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_evaluated_at timestamptz,
    last_value       double precision,            -- ungrouped rules: the value; grouped: the highest group value
    last_requests    bigint,
    last_error       text NOT NULL DEFAULT '',    -- why the last evaluation failed; '' when it did not
    last_delivery_error text NOT NULL DEFAULT ''  -- the last notification that could not be delivered
);
CREATE INDEX IF NOT EXISTS alert_rules_org ON alert_rules (org_id);

CREATE TABLE IF NOT EXISTS alert_state (
    rule_id      text NOT NULL REFERENCES alert_rules(id) ON DELETE CASCADE,
    group_key    text NOT NULL,                   -- '' for an ungrouped rule
    firing       boolean NOT NULL,
    value        double precision NOT NULL,
    requests     bigint NOT NULL,
    fired_at     timestamptz,
    clear_since  timestamptz,                     -- while firing: when the value first went back under the line
    history_id   bigint,
    PRIMARY KEY (rule_id, group_key)
);

CREATE TABLE IF NOT EXISTS alert_history (
    id             bigserial PRIMARY KEY,
    rule_id        text NOT NULL REFERENCES alert_rules(id) ON DELETE CASCADE,
    group_key      text NOT NULL,
    fired_at       timestamptz NOT NULL,
    fired_value    double precision NOT NULL,
    resolved_at    timestamptz,
    resolved_value double precision
);
CREATE INDEX IF NOT EXISTS alert_history_rule ON alert_history (rule_id, fired_at DESC);

CREATE TABLE IF NOT EXISTS alert_outbox (
    id              bigserial PRIMARY KEY,
    rule_id         text NOT NULL REFERENCES alert_rules(id) ON DELETE CASCADE,
    channel         jsonb NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    failed_at       timestamptz,                  -- gave up after the last retry
    last_error      text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS alert_outbox_pending ON alert_outbox (next_attempt_at) WHERE delivered_at IS NULL AND failed_at IS NULL;
