-- Prompt templates registered in llmlens: versioned per org and prompt id (the value clients send as
-- Helicone-Prompt-Id); version N matches requests sent with Helicone-Prompt-Version: N.
CREATE TABLE IF NOT EXISTS prompt_versions (
    org_id      text NOT NULL REFERENCES orgs(id),
    prompt_id   text NOT NULL,
    version     integer NOT NULL,
    messages    jsonb NOT NULL,                 -- [{role, content}] with {{variable}} placeholders
    model       text NOT NULL DEFAULT '',
    parameters  jsonb NOT NULL DEFAULT '{}',    -- temperature, max_tokens, ...
    variables   jsonb NOT NULL DEFAULT '[]',    -- the placeholders, in order of first use
    note        text NOT NULL DEFAULT '',
    created_by  text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, prompt_id, version)
);
