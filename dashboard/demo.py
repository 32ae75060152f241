"""`llmlens demo`: a month of realistic synthetic traffic through the real write path, so a newcomer sees data."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson

from ingest.costing import price
from ingest.event import RequestEvent
from ingest.writer import Writer
from pricing.prices import PriceBook
from storage.postgres import Postgres

MODELS = [  # (provider, model, path, share, input tokens range, output tokens range, p50 latency ms)
    ("openai", "gpt-4o-mini", "/v1/chat/completions", 40, (200, 3000), (20, 600), 700),
    ("openai", "gpt-4o", "/v1/chat/completions", 15, (500, 8000), (50, 1200), 1600),
    ("openai", "text-embedding-3-small", "/v1/embeddings", 15, (20, 2000), (0, 0), 120),
    ("anthropic", "claude-sonnet-4-6", "/v1/messages", 15, (800, 20000), (100, 2000), 2400),
    ("anthropic", "claude-haiku-4-5", "/v1/messages", 10, (200, 4000), (20, 500), 600),
    ("google", "gemini-2.0-flash", "/v1beta/models/gemini-2.0-flash:generateContent", 4, (200, 6000), (20, 800), 800),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "/v1/chat/completions", 1, (200, 3000), (20, 600), 900),
]
TEAMS = ["search", "support", "growth", "research"]
ENVS = ["prod", "prod", "prod", "staging"]
FEATURES = ["summarize", "chat", "classify", "extract", "draft-email"]
# agent runs: each session name follows its script of nested steps (Helicone-Session-Path)
SCRIPTS = {
    "Research agent": ["/plan", "/plan/search", "/plan/search/fetch", "/plan/search/fetch", "/answer", "/answer/review"],
    "Support bot": ["/classify", "/retrieve", "/draft", "/draft/review", "/send"],
    "Onboarding flow": ["/welcome", "/profile", "/profile/extract", "/recommend"],
}


def synthetic(n: int, org_id: str, *, days: int = 30, seed: int = 42, now: datetime | None = None) -> list[RequestEvent]:
    rnd = random.Random(seed)
    now = now or datetime.now(UTC)
    weights = [m[3] for m in MODELS]
    users = [f"user-{i:03d}" for i in range(120)]
    events = []
    in_sessions: list[RequestEvent] = []
    for i in range(n):
        provider, model, path, _, (in_lo, in_hi), (out_lo, out_hi), p50 = rnd.choices(MODELS, weights)[0]
        # more traffic on weekdays and working hours, a growing trend over the month
        age = timedelta(days=days * (1 - rnd.random() ** 0.8))
        created = now - age
        if created.weekday() >= 5 and rnd.random() < 0.5 and age < timedelta(days=days - 2):
            created -= timedelta(days=2)  # quieter weekends
        prompt = rnd.randint(in_lo, in_hi)
        completion = rnd.randint(out_lo, out_hi) if out_hi else 0
        cache_read = prompt // 2 if provider == "anthropic" and rnd.random() < 0.4 else 0
        r = rnd.random()
        status = 200 if r > 0.03 else rnd.choice([429, 500, 503, 400])
        stream = path != "/v1/embeddings" and rnd.random() < 0.35
        latency = int(rnd.lognormvariate(0, 0.5) * p50)
        session = rnd.random() < 0.3
        ev = RequestEvent(
            org_id=org_id, request_id=f"demo-{seed}-{i:07d}", created_at=created, source=rnd.choice(["proxy", "proxy", "async", "otlp"]),
            provider=provider, model=model, path=path, status=status, latency_ms=latency,
            ttft_ms=int(latency * rnd.uniform(0.1, 0.4)) if stream else None,
            prompt_tokens=prompt, completion_tokens=completion if status == 200 else 0, cache_read_tokens=cache_read,
            user_id=rnd.choice(users), stream=stream,
            properties={"team": rnd.choice(TEAMS), "env": rnd.choice(ENVS), "feature": rnd.choice(FEATURES)},
            error="" if status == 200 else orjson.dumps({"error": {"message": f"upstream returned {status}"}}).decode(),
        )
        if session:
            in_sessions.append(ev)
        if rnd.random() < 0.2:
            ev.prompt_id, ev.prompt_version = "support-answer", rnd.choice(["1", "2", "3"])
        ev.request_body = orjson.dumps({"model": model, "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Please {rnd.choice(FEATURES)} this for the {rnd.choice(TEAMS)} team."}]}).decode()
        ev.response_body = orjson.dumps({"model": model, "choices": [{"index": 0, "message": {
            "role": "assistant", "content": "Here is a concise answer for you."}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}).decode() if status == 200 else ev.error
        events.append(ev)
    _as_runs(rnd, in_sessions, seed)
    return events


def _as_runs(rnd: random.Random, chosen: list[RequestEvent], seed: int) -> None:
    """Group events into agent runs: consecutive steps of one user, one after another, along a script of paths."""
    i = 0
    while i < len(chosen):
        name = rnd.choice(list(SCRIPTS))
        script = SCRIPTS[name]
        run = chosen[i:i + rnd.randint(2, len(script))]
        t = run[0].created_at
        for j, ev in enumerate(run):
            ev.session_id, ev.session_name, ev.session_path = f"sess-{seed}-{i}", name, script[j]
            ev.user_id = run[0].user_id
            ev.created_at = t
            t += timedelta(milliseconds=ev.latency_ms + rnd.randint(20, 400))
        i += len(run)


# The templates behind the demo traffic's Helicone-Prompt-Version 1, 2 and 3 of "support-answer".
PROMPT_VERSIONS = [
    ("You are a helpful support assistant for {{product}}.", "Answer {{customer}}'s question: {{question}}", 0.7, "first cut"),
    ("You are a concise support assistant for {{product}}. Answer in three sentences at most.",
     "Answer {{customer}}'s question: {{question}}", 0.4, "shorter answers"),
    ("You are a concise support assistant for {{product}}. Answer in three sentences at most. Cite the help article.",
     "Customer: {{customer}}\nQuestion: {{question}}", 0.2, "cite sources"),
]


def register_prompts(pg: Postgres, org_id: str) -> int:
    """Register the demo prompt's templates once, so the Prompts page can diff its versions."""
    from dashboard.prompts import create_version, registered

    if registered(pg, org_id, "support-answer"):
        return 0
    for system, user, temperature, note in PROMPT_VERSIONS:
        create_version(pg, org_id, {"prompt_id": "support-answer", "model": "gpt-4o-mini", "note": note,
                                    "parameters": {"temperature": temperature},
                                    "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]},
                       "llmlens demo")
    return len(PROMPT_VERSIONS)


async def fill(writer: Writer, prices: PriceBook, org_id: str, n: int, progress: Callable[[int], None] | None = None) -> int:
    """Generate and submit `n` events in chunks through the writer (durable, priced like real traffic)."""
    done = 0
    for start in range(0, n, 5000):
        chunk = synthetic(min(5000, n - start), org_id, seed=start)
        for ev in chunk:
            price(prices, ev)
        await writer.submit(chunk, source="demo")
        done += len(chunk)
        if progress:
            progress(done)
        await asyncio.sleep(0)
    return done
