-- One wide row per LLM request, whatever path it came in by (proxy, async log, OTLP).
-- A re-sent event has the same sort key (org_id, created_at, request_id): ReplacingMergeTree keeps one,
-- and queries read with FINAL so it counts once before merges too.
CREATE TABLE IF NOT EXISTS request_events
(
    org_id             LowCardinality(String),
    created_at         DateTime64(3, 'UTC'),
    request_id         String,
    api_key_id         LowCardinality(String) DEFAULT '',
    source             LowCardinality(String),
    provider           LowCardinality(String) DEFAULT '',
    model              LowCardinality(String) DEFAULT '',
    path               String DEFAULT '',
    target_url         String DEFAULT '',
    status             Int32 DEFAULT 0,
    error              String DEFAULT '',
    latency_ms         UInt32 DEFAULT 0,
    ttft_ms            Nullable(UInt32),
    prompt_tokens      UInt32 DEFAULT 0,
    completion_tokens  UInt32 DEFAULT 0,
    cache_read_tokens  UInt32 DEFAULT 0,
    cache_write_tokens UInt32 DEFAULT 0,
    cost_nanos         Nullable(UInt64),
    -- where the cost came from: 'registry', 'override', 'provided' (sent with the log), '' (no price known)
    cost_source        LowCardinality(String) DEFAULT '',
    user_id            String DEFAULT '',
    session_id         String DEFAULT '',
    session_path       String DEFAULT '',
    session_name       String DEFAULT '',
    prompt_id          String DEFAULT '',
    prompt_version     String DEFAULT '',
    properties         Map(LowCardinality(String), String),
    scores             Map(LowCardinality(String), Int64),
    cache_hit          Bool DEFAULT false,
    -- what a cache hit would have cost at the provider (its own cost is 0)
    cache_saved_nanos  UInt64 DEFAULT 0,
    -- upstream attempts made by the proxy (retries and fallbacks); 1 for a plain call
    attempts           UInt8 DEFAULT 1,
    stream             Bool DEFAULT false,
    request_headers    Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    response_headers   Map(LowCardinality(String), String) CODEC(ZSTD(3)),
    request_body       String DEFAULT '' CODEC(ZSTD(3)),
    response_body      String DEFAULT '' CODEC(ZSTD(3)),
    body_truncated     Bool DEFAULT false,
    schema_version     UInt8 DEFAULT 1,
    updated_at         DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_user_id user_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_session_id session_id TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_prop_keys mapKeys(properties) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_prop_values mapValues(properties) TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(updated_at)
PARTITION BY toYYYYMM(created_at)
ORDER BY (org_id, created_at, request_id)
-- A retried insert of the same spool segment (crash between insert and delete) is dropped by ClickHouse itself.
SETTINGS non_replicated_deduplication_window = 10000;
