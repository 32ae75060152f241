-- Daily aggregates of request_events FINAL, so 30-day panels need not scan every event (dashboard/rollup.py).
-- An (org, day) is recomputed whole from FINAL data, never added to on insert: a re-sent, repriced or re-scored
-- event replaces its old version in request_events, and a recomputed day counts it once.
-- kind says what a row is grouped by besides (org, day):
--   all        provider, model, status
--   prop       a property (key, value); provider, model, status
--   user       a user (sub); model
--   prop_user  a property (key, value) and a user (sub)
--   prop_pair  a property (key, value) and a property of the same request (sub, sub_value), itself included;
--              k² rows per request with k properties, so only computed for days where k is small (paired_at)
-- Grouping columns a kind does not use hold '' or 0. `version` is when the computation started; readers take
-- only the version request_rollup_days names, so a day being recomputed is never counted twice.
CREATE TABLE IF NOT EXISTS request_rollup
(
    org_id         LowCardinality(String),
    kind           Enum8('all' = 1, 'prop' = 2, 'user' = 3, 'prop_user' = 4, 'prop_pair' = 5),
    key            LowCardinality(String),
    value          String,
    sub            String,
    sub_value      String,
    day            Date,
    provider       LowCardinality(String),
    model          LowCardinality(String),
    status         Int32,
    version        DateTime64(6, 'UTC'),
    n              UInt64,
    cost           UInt64,
    cost_n         UInt64,
    unpriced       UInt64,
    prompt         UInt64,
    completion     UInt64,
    latency_total  UInt64,
    errors         UInt64,
    cache_hits     UInt64,
    saved          UInt64,
    first_seen     DateTime64(3, 'UTC'),
    last_seen      DateTime64(3, 'UTC'),
    latency        AggregateFunction(quantilesExact(0.5, 0.95), UInt32)
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org_id, kind, key, value, sub, sub_value, day, provider, model, status);

-- Which (org, day)s the rollup is good for: clean when computed after the last insert touching that day;
-- its prop_pair rows are there too when paired_at = computed_at.
CREATE TABLE IF NOT EXISTS request_rollup_days
(
    org_id       LowCardinality(String),
    day          Date,
    marked_at    SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    computed_at  SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    paired_at    SimpleAggregateFunction(max, DateTime64(6, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (org_id, day);

-- Every insert into request_events (writer, reprice, import, scores) marks the days it touched. It only marks:
-- nothing is counted here, so a re-sent event cannot be counted twice.
CREATE MATERIALIZED VIEW IF NOT EXISTS request_rollup_marks TO request_rollup_days AS
SELECT org_id, toDate(created_at) AS day, now64(6, 'UTC') AS marked_at, toDateTime64(0, 6, 'UTC') AS computed_at,
       toDateTime64(0, 6, 'UTC') AS paired_at
FROM request_events
GROUP BY org_id, day;

-- Events stored before this migration: their days are dirty until first computed.
INSERT INTO request_rollup_days (org_id, day, marked_at, computed_at, paired_at)
SELECT org_id, toDate(created_at) AS day, now64(6, 'UTC'), toDateTime64(0, 6, 'UTC'), toDateTime64(0, 6, 'UTC')
FROM request_events
GROUP BY org_id, day;
