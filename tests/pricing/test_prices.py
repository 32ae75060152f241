"""Prices of real models to the nano-dollar, name resolution, overrides, and exact conversions."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from pricing.prices import PriceBook, Usage, nanos_from_usd, usd_from_nanos

BOOK = PriceBook.load()
AT = datetime(2026, 11, 1, tzinfo=UTC)


def expected(inp: str, out: str, usage: Usage, cache_read: str | None = None, cache_write: str | None = None) -> int:
    """Hand-computed from published per-million prices: uncached input, cache reads, cache writes, output."""
    i, o = Decimal(inp), Decimal(out)
    cr = Decimal(cache_read) if cache_read else i
    cw = Decimal(cache_write) if cache_write else i
    uncached = usage.prompt_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    usd = (uncached * i + usage.cache_read_tokens * cr + usage.cache_write_tokens * cw + usage.completion_tokens * o) / 10**6
    return int((usd * 10**9).to_integral_value())


# (provider, model as sent, usage, published $/MTok: input, output, cache read, cache write)
CASES = [
    # OpenAI pricing page: gpt-4o $2.50 in / $1.25 cached / $10.00 out
    ("openai", "gpt-4o-2024-08-06", Usage(12_345, 678, 2_048), ("2.5", "10", "1.25", None)),
    # gpt-4o-mini $0.15 / $0.075 cached / $0.60
    ("openai", "gpt-4o-mini", Usage(100_000, 20_000, 50_000), ("0.15", "0.6", "0.075", None)),
    # o3 $2.00 / $0.50 cached / $8.00 (reasoning tokens are output tokens)
    ("openai", "o3", Usage(5_000, 12_000, 1_000), ("2", "8", "0.5", None)),
    # text-embedding-3-small $0.02
    ("openai", "text-embedding-3-small", Usage(987_654, 0), ("0.02", "0", None, None)),
    # Anthropic: Sonnet 4.5 $3 / $15, cache read $0.30, cache write (5 min) $3.75 — below the 200k tier
    ("anthropic", "claude-sonnet-4-5-20250929", Usage(150_000, 4_000, 100_000, 20_000), ("3", "15", "0.3", "3.75")),
    # Haiku 4.5 $1 / $5, cache read $0.10, cache write $1.25
    ("anthropic", "claude-haiku-4-5", Usage(40_000, 1_500, 30_000, 5_000), ("1", "5", "0.1", "1.25")),
    # Opus 4.1 $15 / $75, cache read $1.50, cache write $18.75
    ("anthropic", "claude-opus-4-1", Usage(9_000, 2_000, 4_000, 1_000), ("15", "75", "1.5", "18.75")),
    # Google Gemini 2.0 Flash $0.10 / $0.40, cached $0.025
    ("google", "gemini-2.0-flash", Usage(80_000, 3_000, 10_000), ("0.1", "0.4", "0.025", None)),
    # Gemini 2.5 Pro below 200k: $1.25 / $10, cached $0.125
    ("google", "gemini-2.5-pro", Usage(150_000, 8_000, 0), ("1.25", "10", "0.125", None)),
    # Mistral Large $2 / $6
    ("mistral", "mistral-large-latest", Usage(33_333, 7_777), ("2", "6", None, None)),
]


@pytest.mark.parametrize(("provider", "model", "usage", "prices"), CASES, ids=[c[1] for c in CASES])
def test_real_models_to_the_nano_dollar(provider: str, model: str, usage: Usage, prices: tuple[str, str, str | None, str | None]) -> None:
    assert BOOK.cost_nanos(provider, model, usage, at=AT) == expected(prices[0], prices[1], usage, prices[2], prices[3])


def test_long_context_tier() -> None:
    # Sonnet 4.5 above 200k input tokens: $6 in / $22.50 out for the whole request
    usage = Usage(250_000, 1_000)
    assert BOOK.cost_nanos("anthropic", "claude-sonnet-4-5", usage, at=AT) == expected("6", "22.5", usage)


def test_name_resolution() -> None:
    u = Usage(1_000, 100)
    gpt4o = BOOK.cost_nanos("openai", "gpt-4o", u, at=AT)
    assert gpt4o == expected("2.5", "10", u)
    assert BOOK.cost_nanos("openai", "gpt-4o-2024-08-06", u, at=AT) == gpt4o   # dated snapshot
    assert BOOK.cost_nanos("", "openai/gpt-4o", u, at=AT) == gpt4o             # provider prefix, no provider
    assert BOOK.cost_nanos("openrouter", "openai/gpt-4o", u, at=AT) == gpt4o   # router prefix
    assert BOOK.cost_nanos("azure", "gpt-4o", u, at=AT) == gpt4o               # Azure's response model name
    assert BOOK.cost_nanos("", "claude-haiku-4-5-20251001", u, at=AT) == expected("1", "5", u)  # inferred provider
    assert BOOK.cost_nanos("openai", "my-private-model", u, at=AT) is None      # unknown: None, never 0
    assert BOOK.cost_nanos("acme", "", u, at=AT) is None
    assert BOOK.lookup("openai", "my-private-model") is None


def test_overrides_win_exact_before_pattern(tmp_path: Path) -> None:
    f = tmp_path / "prices.toml"
    f.write_text('''
[[price]]
model = "gpt-4o*"
input_per_mtok = 1
output_per_mtok = 2

[[price]]
provider = "openai"
model = "gpt-4o-mini"
input_per_mtok = "0.10"
output_per_mtok = "0.40"
cache_read_per_mtok = "0.01"
''')
    book = PriceBook.load(f)
    u = Usage(1_000_000, 1_000_000, 500_000)
    assert book.cost_nanos("openai", "gpt-4o-mini", u) == 50_000_000 + 5_000_000 + 400_000_000
    assert book.cost_nanos("azure", "gpt-4o-mini", u) == 3_000_000_000  # provider differs: the pattern matches
    assert book.cost_nanos("openai", "gpt-4o-2024-08-06", u) == 3_000_000_000
    assert book.cost_nanos("anthropic", "claude-haiku-4-5", Usage(10, 10), at=AT) == expected("1", "5", Usage(10, 10))
    assert book.source("openai", "gpt-4o") == "override" and book.source("anthropic", "claude-haiku-4-5") == "registry"


@pytest.mark.parametrize(("text", "error"), [
    ("[[price]]\nmodel = 1\ninput_per_mtok = 1", "[[price]] #1: 'model' is required (a name, or a pattern with *)"),
    ("[[price]]\nmodel = 'm'\ninput_per_mtok = -1", "[[price]] #1: input_per_mtok must be a non-negative number, not -1"),
    ("[[price]]\nmodel = 'm'\ninput_per_mtok = 'abc'", "[[price]] #1: input_per_mtok 'abc' is not a number"),
    ("[[price]]\nmodel = 'm'\ninput_cost = 1", "[[price]] #1: unknown key 'input_cost'"),
    ("[[price]]\nmodel = 'm'", "[[price]] #1: give at least input_per_mtok or output_per_mtok"),
    ("[prices]\nx = 1", "unknown table 'prices'; use [[price]] entries"),
    ("[[price]\nmodel=", "is not valid TOML"),
])
def test_bad_override_files_say_where(tmp_path: Path, text: str, error: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(ValueError) as info:
        PriceBook.load(f)
    assert str(f) in str(info.value) and error in str(info.value)


def test_exact_conversions() -> None:
    assert usd_from_nanos(123_450) == "0.000123450"
    assert usd_from_nanos(12_345_678_901_234) == "12345.678901234"
    assert nanos_from_usd("0.000000001") == 1
    assert nanos_from_usd(0.1) == 100_000_000
    assert nanos_from_usd(Decimal("1.0000000005")) == 1_000_000_001  # half-up at the last step only
    for bad in (-1, "x", float("nan"), True):
        with pytest.raises((ValueError, ArithmeticError)):
            nanos_from_usd(bad)  # type: ignore[arg-type]
