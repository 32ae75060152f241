"""Settings: every knob has an `LLMLENS_` name, a default and a help line; read once, passed in as values."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_GATEWAY_HOSTS = (
    "api.openai.com,api.anthropic.com,api.together.xyz,api.groq.com,openrouter.ai,api.mistral.ai,"
    "api.fireworks.ai,api.deepseek.com,api.x.ai,api.perplexity.ai,api.deepinfra.com,api.cerebras.ai,"
    "generativelanguage.googleapis.com,api.cohere.com,api.hyperbolic.xyz,api.novita.ai,"
    "integrate.api.nvidia.com,api.studio.nebius.com,*.openai.azure.com"
)


class SettingsError(ValueError):
    """A setting has a value llmlens cannot use; the message names the key and the value."""


def _int(key: str, raw: str) -> int:
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise SettingsError(f"{key} has value {raw!r}; expected an integer") from None
    if value < 0:
        raise SettingsError(f"{key} has value {raw!r}; expected a non-negative integer")
    return value


def _float(key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{key} has value {raw!r}; expected a number") from None
    if not value > 0:
        raise SettingsError(f"{key} has value {raw!r}; expected a positive number")
    return value


def _bool(key: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{key} has value {raw!r}; expected true or false")


def _url(key: str, raw: str) -> str:
    raw = raw.strip()
    if raw and not re.match(r"^[a-z][a-z0-9+.-]*://", raw):
        raise SettingsError(f"{key} has value {raw!r}; expected a URL such as https://host:port")
    return raw.rstrip("/")


def _dsn(key: str, raw: str) -> str:
    raw = raw.strip()
    if raw and not (re.match(r"^postgres(ql)?://", raw) or "=" in raw):
        raise SettingsError(f"{key} has value {raw!r}; expected postgresql://user:password@host:5432/db")
    return raw


def _smtp(key: str, raw: str) -> str:
    raw = raw.strip()
    if raw and not re.match(r"^smtps?://[^/]+", raw):
        raise SettingsError(f"{key} has value {raw!r}; expected smtp://user:password@host:587 or smtps://host:465")
    return raw


def _db_name(key: str, raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", raw):
        raise SettingsError(f"{key} has value {raw!r}; expected a database name of letters, digits and _")
    return raw


def _hosts(key: str, raw: str) -> tuple[str, ...]:
    hosts = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    for h in hosts:
        if not re.fullmatch(r"(\*\.)?[a-z0-9.\-\[\]:]+", h):
            raise SettingsError(f"{key} has value {raw!r}; {h!r} is not a host name")
    return hosts


def _choice(key: str, raw: str, choices: tuple[str, ...]) -> str:
    if raw not in choices:
        raise SettingsError(f"{key} has value {raw!r}; expected one of {', '.join(choices)}")
    return raw


def _path(key: str, raw: str) -> Path:
    return Path(raw).expanduser()


def _opt_path(key: str, raw: str) -> Path | None:
    return Path(raw).expanduser() if raw.strip() else None


def _str(key: str, raw: str) -> str:
    return raw


def _setting(default: Any, env_default: str, parse: Callable[[str, str], Any], help: str) -> Any:
    return field(default=default, metadata={"env_default": env_default, "parse": parse, "help": help})


@dataclass(frozen=True)
class Settings:
    data_dir: Path = _setting(Path(".llmlens"), ".llmlens", _path, "Where the embedded stores, the spool and the secret key live.")
    host: str = _setting("127.0.0.1", "127.0.0.1", _str, "Address `llmlens serve` listens on (`--host` overrides).")
    port: int = _setting(8787, "8787", _int, "Port `llmlens serve` listens on (`--port` overrides).")
    public_url: str = _setting("", "", _url, "The URL users reach llmlens at, for links in alerts and setup; default http://host:port.")
    clickhouse_url: str = _setting("", "", _url, "A ClickHouse server (http[s]://user:password@host:8123); empty = embedded chDB under the data dir.")
    chdb_path: Path | None = _setting(None, "", _opt_path, "Where embedded chDB keeps its data; empty = <data dir>/chdb (one path per process).")
    clickhouse_database: str = _setting("llmlens", "llmlens", _db_name, "ClickHouse database that holds the events.")
    database_url: str = _setting("", "", _dsn, "A PostgreSQL DSN (postgresql://...); empty = embedded PostgreSQL under the data dir.")
    spool_max_bytes: int = _setting(1 << 30, str(1 << 30), _int, "Disk quota of the durable spool; when full, log endpoints answer 503.")
    batch_rows: int = _setting(5000, "5000", _int, "Most events the writer inserts into ClickHouse in one batch.")
    batch_wait_s: float = _setting(1.0, "1.0", _float, "Longest an accepted event waits in the spool before its batch is inserted.")
    max_log_bytes: int = _setting(64 << 20, str(64 << 20), _int, "Largest request body the log endpoints accept (413 beyond).")
    max_body_bytes: int = _setting(4 << 20, str(4 << 20), _int, "Largest request/response body stored per event; longer ones are truncated and marked.")
    key_cache_ttl_s: float = _setting(30.0, "30", _float, "How long a looked-up API key is trusted from memory (a revoke takes effect within this).")
    secret_key: str = _setting("", "", _str, "Signs dashboard session cookies; empty = generated once and kept in the data dir.")
    log_level: str = _setting("info", "info", _str, "Python log level for llmlens (debug, info, warning, error).")
    openai_base_url: str = _setting("https://api.openai.com", "https://api.openai.com", _url, "Upstream for /openai/*.")
    anthropic_base_url: str = _setting("https://api.anthropic.com", "https://api.anthropic.com", _url, "Upstream for /anthropic/*.")
    gateway_allowed_hosts: tuple[str, ...] = _setting(
        _hosts("", DEFAULT_GATEWAY_HOSTS), DEFAULT_GATEWAY_HOSTS, _hosts,
        "Comma-separated hosts /gateway and Helicone-OpenAI-Api-Base may reach (`*.domain` allowed); private addresses only if listed.",
    )
    upstream_transport: str = _setting("aiohttp", "aiohttp", lambda k, v: _choice(k, v, ("aiohttp", "httpx")),
                                       "The proxy's outbound HTTP transport under the httpx API: aiohttp (faster) or httpx.")
    upstream_timeout_s: float = _setting(600.0, "600", _float, "Longest the proxy waits on the provider before answering 504.")
    cache_max_entry_bytes: int = _setting(4 << 20, str(4 << 20), _int, "Largest response the proxy cache keeps (Helicone-Cache-Enabled).")
    cache_max_bytes: int = _setting(1 << 30, str(1 << 30), _int, "Total size of the proxy cache in PostgreSQL; the oldest entries go first.")
    prices_file: Path | None = _setting(None, "", _opt_path, "TOML file of price overrides (self-hosted, fine-tuned or negotiated rates).")
    prices_auto_update: bool = _setting(False, "0", _bool, "Fetch newer prices from the genai-prices project at run time (needs network).")
    alert_interval_s: float = _setting(60.0, "60", _float, "How often alert rules are evaluated (each rule runs one ClickHouse query).")
    smtp_url: str = _setting("", "", _smtp, "SMTP server for alert email: smtp://user:password@host:587 (STARTTLS) or smtps://...:465; empty = no email channel.")
    alert_from: str = _setting("llmlens@localhost", "llmlens@localhost", _str, "From address of alert email.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = env_name(f.name)
            if key in environ:
                values[f.name] = f.metadata["parse"](key, environ[key])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def chdb_dir(self) -> Path:
        return self.chdb_path or self.data_dir / "chdb"

    @property
    def base_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"


def env_name(field_name: str) -> str:
    return "LLMLENS_" + field_name.upper()


def documented() -> list[tuple[str, str, str]]:
    """(env name, default as written in the environment, help) for every setting; the README lists these."""
    return [
        (env_name(f.name), f.metadata["env_default"], f.metadata["help"]) for f in dataclasses.fields(Settings)
    ]
