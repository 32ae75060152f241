"""Model prices: the genai-prices registry (bundled data, dated) under a TOML file of overrides; exact arithmetic.

Every amount is a Decimal until the very end, where it becomes integer nano-USD (USD x 1e9, half-up), the
unit ClickHouse sums without drift. No network at run time unless auto-update is switched on.
"""

from __future__ import annotations

import fnmatch
import threading
import tomllib
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from importlib.metadata import version
from pathlib import Path
from typing import Any

NANO = Decimal(10) ** 9
MTOK = Decimal(10) ** 6
_PRICE_KEYS = ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok", "cache_write_per_mtok")
_OVERRIDE_KEYS = {"provider", "model", *_PRICE_KEYS}
# Our provider names -> genai-prices provider ids (None: let genai-prices infer from the model).
_PROVIDER_IDS = {
    "openai": "openai", "anthropic": "anthropic", "azure": "azure", "google": "google", "gemini": "google",
    "vertex": "google", "mistral": "mistral", "groq": "groq", "together": "together", "openrouter": "openrouter",
    "x-ai": "x-ai", "xai": "x-ai", "deepseek": "deepseek", "bedrock": "aws", "aws": "aws", "cohere": "cohere",
    "fireworks": "fireworks", "perplexity": "perplexity", "cerebras": "cerebras", "novita": "novita",
}


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0  # all input tokens, cache reads and writes included
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Price:
    """The price llmlens would use for a model, per million tokens, and where it came from."""

    provider: str
    model: str
    input_per_mtok: Decimal | None
    output_per_mtok: Decimal | None
    cache_read_per_mtok: Decimal | None
    cache_write_per_mtok: Decimal | None
    source: str
    tiered: bool = False
    tier_start: int | None = None  # input tokens from which a tier price applies (registry models)

    def describe(self) -> str:
        def fmt(v: Decimal | None) -> str:
            return "-" if v is None else f"${v.normalize():f}"

        return "\n".join([
            f"model:        {self.model}" + (f" ({self.provider})" if self.provider else ""),
            f"input:        {fmt(self.input_per_mtok)} / 1M tokens" + (" (tiered; base tier shown)" if self.tiered else ""),
            f"output:       {fmt(self.output_per_mtok)} / 1M tokens",
            f"cache read:   {fmt(self.cache_read_per_mtok)} / 1M tokens",
            f"cache write:  {fmt(self.cache_write_per_mtok)} / 1M tokens",
            f"source:       {self.source}",
        ])


@dataclass(frozen=True, slots=True)
class Override:
    provider: str | None
    model: str
    pattern: bool
    price: Price

    def matches(self, provider: str, model: str) -> bool:
        if self.provider is not None and self.provider != provider.lower():
            return False
        if self.pattern:
            return fnmatch.fnmatchcase(model.lower(), self.model)
        return model.lower() == self.model


def _decimal(value: Any, where: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{where} must be a number or a decimal string, not {value!r}")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{where} {value!r} is not a number") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"{where} must be a non-negative number, not {value!r}")
    return d


def load_overrides(path: Path) -> list[Override]:
    """Read LLMLENS_PRICES_FILE; every problem names the file, the entry and the key."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read prices file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"prices file {path} is not valid TOML: {exc}") from None
    unknown_top = set(doc) - {"price"}
    if unknown_top:
        raise ValueError(f"prices file {path}: unknown table {sorted(unknown_top)[0]!r}; use [[price]] entries")
    entries = doc.get("price", [])
    if not isinstance(entries, list):
        raise ValueError(f"prices file {path}: 'price' must be an array of tables ([[price]])")
    out = []
    for i, entry in enumerate(entries, 1):
        where = f"prices file {path}, [[price]] #{i}"
        unknown = set(entry) - _OVERRIDE_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r}; known: {', '.join(sorted(_OVERRIDE_KEYS))}")
        model = entry.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"{where}: 'model' is required (a name, or a pattern with *)")
        provider = entry.get("provider")
        if provider is not None and not isinstance(provider, str):
            raise ValueError(f"{where}: 'provider' must be a string")
        if "input_per_mtok" not in entry and "output_per_mtok" not in entry:
            raise ValueError(f"{where}: give at least input_per_mtok or output_per_mtok")
        values = {k: _decimal(entry[k], f"{where}: {k}") if k in entry else None for k in _PRICE_KEYS}
        out.append(Override(
            provider=provider.lower() if provider else None, model=model.strip().lower(), pattern="*" in model,
            price=Price(provider or "", model.strip(), values["input_per_mtok"], values["output_per_mtok"],
                        values["cache_read_per_mtok"], values["cache_write_per_mtok"], f"override {path}"),
        ))
    # Exact names before patterns; otherwise file order.
    return sorted(out, key=lambda o: o.pattern)


class PriceBook:
    def __init__(self, overrides: list[Override], *, auto_update: bool = False) -> None:
        self.overrides = overrides
        self.auto_update = auto_update
        self._registry_cache: dict[tuple[str, str], tuple[str | None, str] | None] = {}
        self._override_cache: dict[tuple[str, str], Override | None] = {}
        self._unit_cache: dict[tuple[tuple[str | None, str], Any], Price | None] = {}
        self._lock = threading.Lock()
        self._updater: Any = None
        if auto_update:
            from genai_prices import UpdatePrices

            self._updater = UpdatePrices()
            self._updater.start()

    @classmethod
    def load(cls, prices_file: Path | None = None, *, auto_update: bool = False) -> PriceBook:
        book = cls(load_overrides(prices_file) if prices_file else [], auto_update=auto_update)
        book.lookup("openai", "gpt-4o-mini")  # load the registry now, not on the first logged call
        return book

    # --- lookups ------------------------------------------------------------------------------------
    def _override(self, provider: str, model: str) -> Override | None:
        key = (provider, model)
        if key not in self._override_cache:
            self._override_cache[key] = next((o for o in self.overrides if o.matches(provider, model)), None)
        return self._override_cache[key]

    def _resolve(self, provider: str, model: str) -> tuple[str | None, str] | None:
        """(genai-prices provider id or None, model ref) that the registry can price, memoized."""
        key = (provider, model)
        if key in self._registry_cache:
            return self._registry_cache[key]
        from genai_prices import Usage as GUsage
        from genai_prices import calc_price

        pid = _PROVIDER_IDS.get(provider.lower())
        candidates: list[tuple[str | None, str]] = [(pid, model)]
        if "/" in model:  # provider-prefixed names: openai/gpt-4o, anthropic/claude-...
            prefix, rest = model.split("/", 1)
            candidates += [(_PROVIDER_IDS.get(prefix.lower(), pid), rest), (pid, rest)]
        if pid is not None:
            candidates.append((None, model.split("/", 1)[-1]))
        found = None
        for candidate_pid, ref in candidates:
            try:
                calc_price(GUsage(input_tokens=1), ref, provider_id=candidate_pid)
            except (LookupError, ValueError):
                continue
            found = (candidate_pid, ref)
            break
        with self._lock:
            if len(self._registry_cache) > 50_000:
                self._registry_cache.clear()
            self._registry_cache[key] = found
        return found

    def lookup(self, provider: str, model: str, *, at: datetime | None = None) -> Price | None:
        if not model:
            return None
        override = self._override(provider, model)
        if override is not None:
            return override.price
        resolved = self._resolve(provider, model)
        if resolved is None:
            return None
        from genai_prices import Usage as GUsage
        from genai_prices import calc_price

        calc = calc_price(GUsage(input_tokens=1), resolved[1], provider_id=resolved[0], genai_request_timestamp=at)
        mp = calc.model_price

        def per_mtok(name: str) -> tuple[Decimal | None, bool]:
            value = getattr(mp, name, None)
            if value is None:
                return None, False
            if isinstance(value, Decimal):
                return value, False
            base = getattr(value, "base", None)
            return (base if isinstance(base, Decimal) else None), True

        inp, t1 = per_mtok("input_mtok")
        out, t2 = per_mtok("output_mtok")
        cr, t3 = per_mtok("cache_read_mtok")
        cw, t4 = per_mtok("cache_write_mtok")
        stamp = calc.auto_update_timestamp
        source = (f"genai-prices auto-update {stamp:%Y-%m-%d %H:%M}" if stamp
                  else f"genai-prices {version('genai-prices')} bundled data")
        return Price(calc.provider.id, calc.model.id, inp, out, cr, cw, source, tiered=t1 or t2 or t3 or t4)

    def cost_nanos(self, provider: str, model: str, usage: Usage, *, at: datetime | None = None) -> int | None:
        """Cost in integer nano-USD, or None when no price is known (never 0 for unknown)."""
        if not model:
            return None
        override = self._override(provider, model)
        if override is not None:
            return _nanos(_override_cost(override.price, usage))
        resolved = self._resolve(provider, model)
        if resolved is None:
            return None
        at = at or datetime.now(UTC)
        unit = self._unit_prices(resolved, at)
        if unit is not None and (unit.tier_start is None or usage.prompt_tokens < unit.tier_start):
            # Linear below the first tier: the same result as calc_price at a fraction of its cost.
            return _nanos(_override_cost(unit, usage))
        from genai_prices import Usage as GUsage
        from genai_prices import calc_price

        g = GUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                   cache_read_tokens=usage.cache_read_tokens, cache_write_tokens=usage.cache_write_tokens)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                calc = calc_price(g, resolved[1], provider_id=resolved[0], genai_request_timestamp=at)
        except (LookupError, ValueError):
            return None
        return _nanos(calc.total_price)

    def source(self, provider: str, model: str) -> str:
        """'override' or 'registry' for a model that has a price."""
        return "override" if self._override(provider, model) is not None else "registry"

    def _unit_prices(self, resolved: tuple[str | None, str], at: datetime) -> Price | None:
        """Base per-MTok prices of a registry model on a day (memoized), with the first tier's start."""
        key = (resolved, at.date())
        if key in self._unit_cache:
            return self._unit_cache[key]
        from genai_prices import Usage as GUsage
        from genai_prices import calc_price

        mp = calc_price(GUsage(input_tokens=1), resolved[1], provider_id=resolved[0], genai_request_timestamp=at).model_price
        starts: list[int] = []

        def base(name: str) -> Decimal | None:
            value = getattr(mp, name, None)
            if value is None or isinstance(value, Decimal):
                return value
            tiers = getattr(value, "tiers", None) or []
            starts.extend(int(t.start) for t in tiers)
            b = getattr(value, "base", None)
            return b if isinstance(b, Decimal) else None

        unit = Price("", "", base("input_mtok"), base("output_mtok"), base("cache_read_mtok"), base("cache_write_mtok"),
                     "", tier_start=min(starts) if starts else None)
        with self._lock:
            if len(self._unit_cache) > 50_000:
                self._unit_cache.clear()
            self._unit_cache[key] = unit
        return unit

    def close(self) -> None:
        if self._updater is not None:
            self._updater.stop()


def _override_cost(p: Price, u: Usage) -> Decimal:
    inp = p.input_per_mtok or Decimal(0)
    uncached = max(u.prompt_tokens - u.cache_read_tokens - u.cache_write_tokens, 0)
    total = (
        uncached * inp
        + u.cache_read_tokens * (p.cache_read_per_mtok if p.cache_read_per_mtok is not None else inp)
        + u.cache_write_tokens * (p.cache_write_per_mtok if p.cache_write_per_mtok is not None else inp)
        + u.completion_tokens * (p.output_per_mtok or Decimal(0))
    )
    return total / MTOK


def _nanos(usd: Decimal) -> int:
    return int((usd * NANO).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def usd_from_nanos(n: int) -> str:
    """Exact decimal USD with 9 places: 123450 -> '0.000123450'."""
    sign = "-" if n < 0 else ""
    whole, frac = divmod(abs(n), 10**9)
    return f"{sign}{whole}.{frac:09d}"


# one event's cost (or a budget) beyond this is a unit mistake; it also keeps nanos inside ClickHouse's UInt64
MAX_COST_USD = Decimal(10**9)


def nanos_from_usd(value: str | int | float | Decimal) -> int:
    """USD (a decimal string is exact; a float goes through its shortest repr, so 0.1 -> 100000000)."""
    if isinstance(value, bool):
        raise ValueError("a cost must be a number, not a boolean")
    d = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    if not d.is_finite() or d < 0:
        raise ValueError(f"a cost must be a non-negative number, not {value!r}")
    if d > MAX_COST_USD:
        raise ValueError(f"a cost must be at most {MAX_COST_USD} USD, not {value!r}")
    return _nanos(d)
