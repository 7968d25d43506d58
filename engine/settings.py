"""Settings: one frozen object built from an environment mapping, never read at import time.

Every value is checked here, so that a configuration that cannot work stops the process at start
with one line naming the variable and the problem. Connectivity (a Postgres that is down, an
unwritable SQLite path, a flow that does not validate) is checked later by the composition root,
which owns the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import SplitResult, parse_qsl, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError

N = TypeVar("N", int, float)

DEFAULT_GRAPH_API = "https://graph.facebook.com/v25.0"
SENDERS = ("console", "whatsapp", "twilio")


class Secret:
    """A value that must never be printed: `repr` and `str` mask it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Database:
    """Where the durable state lives: an SQLite file or a Postgres DSN."""

    kind: Literal["sqlite", "postgres"]
    path: Path | None = None  # sqlite
    dsn: Secret | None = None  # postgres (may hold a password)

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite file {self.path}"
        assert self.dsn is not None
        parts = urlsplit(self.dsn.reveal())
        schema = next((v for k, v in parse_qsl(parts.query) if k == "schema"), None)
        where = f"postgres at {parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        return where + (f" (schema {schema})" if schema else "")


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    database: Database = field(
        default_factory=lambda: Database("sqlite", path=Path("var/engine.sqlite3"))
    )
    redis_url: Secret | None = None
    flows_dir: Path = Path("flows")
    entry_flow: str = "support"
    handoff_ttl: float = 24 * 3600.0
    sender: str = "console"
    twilio_account_sid: str | None = None
    twilio_auth_token: Secret | None = None
    twilio_from: str | None = None  # the Twilio WhatsApp sender, E.164
    twilio_api_url: str = "https://api.twilio.com"
    public_url: str | None = None  # the base URL Twilio calls: its signatures cover it
    whatsapp_verify_token: Secret | None = None
    whatsapp_app_secret: Secret | None = None
    whatsapp_access_token: Secret | None = None
    whatsapp_access_token_file: Path | None = None
    whatsapp_phone_number_id: str | None = None
    whatsapp_api_url: str = DEFAULT_GRAPH_API
    admin_token: Secret | None = None
    actions_secret: Secret | None = None  # signs the built-in http action's requests
    timezone: str = "UTC"  # IANA name: where "tomorrow 5pm" is read
    media_dir: str = "var/media"  # files flows send by name (invoices), and the console's copies
    # The LLM: off without a key (flows take their non-LLM paths).
    openai_api_key: Secret | None = None
    openai_base_url: str | None = None  # None: OpenAI's own
    llm_models: tuple[str, ...] = ("gpt-4o-mini",)  # LLM_MODEL, then LLM_FALLBACK_MODELS
    llm_timeout: float = 10.0  # LLM_TIMEOUT_S: the whole turn, every model tried in it
    llm_concurrency: int = 16
    llm_daily_calls: int = 50  # per contact and UTC day; then the non-LLM path
    llm_prices: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    llm_embedding_model: str | None = None
    llm_top_k: int = 4
    llm_passage_chars: int = 800
    knowledge_dir: Path = Path("flows/knowledge")
    # Tuning, with defaults that suit one small container.
    max_actors: int = 10_000
    send_concurrency: int = 32
    max_backlog: int = 50_000
    sqlite_synchronous: str = "NORMAL"
    dedupe_ttl: float = 8 * 86400.0
    journal_retention: float = 86400.0
    send_max_age: float = 24 * 3600.0
    send_reconcile: float = 10.0  # after a crash: how long status webhooks may claim a send
    send_rate: int = 80  # sends a second per business number (WhatsApp's default throughput)
    http_read_timeout: float = 30.0
    max_body_memory: int = 64 * 1024 * 1024
    log_level: str = "INFO"

    def secrets(self) -> list[str]:
        """Every secret value, and the passwords inside URLs, for the log redactor."""
        found = [
            s.reveal()
            for s in (
                self.whatsapp_access_token,
                self.whatsapp_app_secret,
                self.whatsapp_verify_token,
                self.admin_token,
                self.actions_secret,
                self.twilio_auth_token,
                self.openai_api_key,
            )
            if s is not None
        ]
        for url in (self.redis_url, self.database.dsn):
            if url is not None:
                found.append(url.reveal())
                password = urlsplit(url.reveal()).password
                if password:
                    found.append(password)
        return found

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from `environ`; raise ConfigError naming the first bad variable."""
        env = {k: v.strip() for k, v in environ.items() if v.strip() != ""}
        access_token = _secret(env, "WHATSAPP_ACCESS_TOKEN")
        token_file = env.get("WHATSAPP_ACCESS_TOKEN_FILE")
        if access_token is not None and token_file is not None:
            raise ConfigError("set WHATSAPP_ACCESS_TOKEN or WHATSAPP_ACCESS_TOKEN_FILE, not both")
        has_token = access_token is not None or token_file is not None
        sender = env.get("SENDER", "whatsapp" if has_token else "console").lower()
        if sender not in SENDERS:
            raise ConfigError(f"SENDER={sender!r} is unknown; use one of {', '.join(SENDERS)}")
        twilio = _twilio(env, sender)
        if sender == "whatsapp" and not has_token:
            raise ConfigError(
                "SENDER=whatsapp needs WHATSAPP_ACCESS_TOKEN (or WHATSAPP_ACCESS_TOKEN_FILE)"
            )
        api_url = env.get("WHATSAPP_API_URL", DEFAULT_GRAPH_API).rstrip("/")
        _check_http_url("WHATSAPP_API_URL", api_url)
        synchronous = env.get("SQLITE_SYNCHRONOUS", "NORMAL").upper()
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"SQLITE_SYNCHRONOUS={synchronous!r}: use NORMAL or FULL")
        level = env.get("LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"LOG_LEVEL={level!r}: use DEBUG, INFO, WARNING or ERROR")
        entry_flow = env.get("ENTRY_FLOW", "support")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", entry_flow):
            raise ConfigError(f"ENTRY_FLOW={entry_flow!r} is not a flow name")
        return cls(
            host=env.get("HOST", "0.0.0.0"),
            port=_int(env, "PORT", 8080, low=0, high=65535),
            database=parse_database_url(env.get("DATABASE_URL", "sqlite:///var/engine.sqlite3")),
            redis_url=_redis(env),
            flows_dir=Path(env.get("FLOWS_DIR", "flows")),
            entry_flow=entry_flow,
            handoff_ttl=_duration(env, "HANDOFF_TTL", "24h"),
            sender=sender,
            **twilio,
            whatsapp_verify_token=_secret(env, "WHATSAPP_VERIFY_TOKEN"),
            whatsapp_app_secret=_secret(env, "WHATSAPP_APP_SECRET"),
            whatsapp_access_token=access_token,
            whatsapp_access_token_file=Path(token_file) if token_file else None,
            whatsapp_phone_number_id=env.get("WHATSAPP_PHONE_NUMBER_ID"),
            whatsapp_api_url=api_url,
            admin_token=_secret(env, "ADMIN_TOKEN"),
            actions_secret=_secret(env, "ACTIONS_SECRET"),
            timezone=_timezone(env),
            media_dir=env.get("MEDIA_DIR", "var/media"),
            **_llm(env),
            max_actors=_int(env, "MAX_ACTORS", 10_000, low=1),
            send_concurrency=_int(env, "SEND_CONCURRENCY", 32, low=1, high=1024),
            max_backlog=_int(env, "MAX_BACKLOG", 50_000, low=1),
            sqlite_synchronous=synchronous,
            dedupe_ttl=_duration(env, "DEDUPE_TTL", "8d"),
            journal_retention=_duration(env, "JOURNAL_RETENTION", "24h"),
            send_max_age=_duration(env, "SEND_MAX_AGE", "24h"),
            send_reconcile=_reconcile(env),
            send_rate=_int(env, "SEND_RATE", 80, low=1, high=10_000),
            http_read_timeout=_duration(env, "HTTP_READ_TIMEOUT", "30s"),
            max_body_memory=_size(env, "MAX_BODY_MEMORY", "64MB"),
            log_level=level,
        )


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'24h', '90s', '1h30m', '1.5d' or plain seconds -> seconds. Raises ValueError."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 24h or 7d")
    return total


def parse_database_url(url: str) -> Database:
    """`sqlite:///relative/path`, `sqlite:////absolute/path` or `postgresql://...`."""
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise ConfigError(
                f"DATABASE_URL={url!r}: write sqlite:///relative/path or sqlite:////absolute/path"
            )
        return Database("sqlite", path=Path(url[len("sqlite:///") :]))
    parts = _split("DATABASE_URL", url)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as e:
            raise ConfigError(f"DATABASE_URL: malformed port ({e})") from e
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError("DATABASE_URL: a postgresql:// URL needs a host")
        return Database("postgres", dsn=Secret(url))
    scheme = parts.scheme or "(none)"
    raise ConfigError(
        f"DATABASE_URL: unsupported scheme {scheme!r}; use sqlite:///path or postgresql://..."
    )


def _redis(env: Mapping[str, str]) -> Secret | None:
    url = env.get("REDIS_URL")
    if url is None:
        return None
    parts = _split("REDIS_URL", url)
    if parts.scheme not in ("redis", "rediss", "unix") or (
        parts.scheme != "unix" and not parts.hostname
    ):
        raise ConfigError("REDIS_URL: expected redis://host:port/db (or rediss://, unix://)")
    try:
        parts.port  # noqa: B018
    except ValueError as e:
        raise ConfigError(f"REDIS_URL: malformed port ({e})") from e
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ConfigError(f"REDIS_URL: the database is a number (redis://host:port/0), not {db!r}")
    return Secret(url)


def _twilio(env: Mapping[str, str], sender: str) -> dict[str, Any]:
    """The Twilio settings: credentials together or not at all; the sender's number in E.164;
    PUBLIC_URL as the base Twilio calls (its webhooks are refused without it)."""
    sid, token = env.get("TWILIO_ACCOUNT_SID"), _secret(env, "TWILIO_AUTH_TOKEN")
    if (sid is None) != (token is None):
        raise ConfigError("set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN together")
    if sid is not None and not re.fullmatch(r"AC[0-9a-fA-F]{32}", sid):
        raise ConfigError("TWILIO_ACCOUNT_SID: AC and 32 hex digits")
    sender_number = env.get("TWILIO_WHATSAPP_FROM")
    if sender_number is not None:
        sender_number = sender_number.removeprefix("whatsapp:")
        if not re.fullmatch(r"\+[1-9][0-9]{6,14}", sender_number):
            raise ConfigError(
                "TWILIO_WHATSAPP_FROM: the sender in E.164, like whatsapp:+14155238886"
            )
    if sender == "twilio" and (sid is None or sender_number is None):
        raise ConfigError(
            "SENDER=twilio needs TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_WHATSAPP_FROM"
        )
    api_url = env.get("TWILIO_API_URL", "https://api.twilio.com").rstrip("/")
    _check_http_url("TWILIO_API_URL", api_url)
    public = env.get("PUBLIC_URL")
    if public is not None:
        public = public.rstrip("/")
        _check_http_url("PUBLIC_URL", public)
        parts = _split("PUBLIC_URL", public)
        if parts.query or parts.fragment or "@" in parts.netloc or any(c.isspace() for c in public):
            raise ConfigError(
                "PUBLIC_URL: the scheme, host and path Twilio calls (no query, fragment, "
                "password or spaces)"
            )
    return {
        "twilio_account_sid": sid,
        "twilio_auth_token": token,
        "twilio_from": sender_number,
        "twilio_api_url": api_url,
        "public_url": public,
    }


def _llm(env: Mapping[str, str]) -> dict[str, Any]:
    """The model settings. None of them needs a model to be up: a model that is down is a
    state of the model (the flows' other paths answer), never a start error."""
    base_url = env.get("OPENAI_BASE_URL")
    if base_url is not None:
        base_url = base_url.rstrip("/")
        _check_http_url("OPENAI_BASE_URL", base_url)
    primary = env.get("LLM_MODEL", "gpt-4o-mini")
    fallbacks = [m.strip() for m in env.get("LLM_FALLBACK_MODELS", "").split(",") if m.strip()]
    models = tuple(dict.fromkeys([primary, *fallbacks]))  # a model named twice is tried once
    for model in models:
        if len(model) > 200 or any(c.isspace() for c in model):
            raise ConfigError(f"LLM model {model[:60]!r} is not a model name")
    timeout = _parsed(env, "LLM_TIMEOUT_S", "10", float, least=1.0, bound="at least 1 second")
    if not 1.0 <= timeout <= 120:  # nan too
        raise ConfigError(f"LLM_TIMEOUT_S={env['LLM_TIMEOUT_S']!r}: seconds from 1 to 120")
    knowledge = Path(env.get("KNOWLEDGE_DIR", "flows/knowledge"))
    if knowledge.exists() and not knowledge.is_dir():
        raise ConfigError(f"KNOWLEDGE_DIR={str(knowledge)!r} is a file, not a folder")
    return {
        "openai_api_key": _secret(env, "OPENAI_API_KEY"),
        "openai_base_url": base_url,
        "llm_models": models,
        "llm_timeout": timeout,
        "llm_concurrency": _int(env, "LLM_CONCURRENCY", 16, low=1, high=1024),
        "llm_daily_calls": _int(env, "LLM_DAILY_CALLS", 50, low=0),
        "llm_prices": _prices(env.get("LLM_PRICES", "")),
        "llm_embedding_model": env.get("LLM_EMBEDDING_MODEL"),
        "llm_top_k": _int(env, "LLM_TOP_K", 4, low=1, high=20),
        "llm_passage_chars": _int(env, "LLM_PASSAGE_CHARS", 800, low=200, high=4000),
        "knowledge_dir": knowledge,
    }


MAX_PRICE = Decimal(10_000)  # USD per million tokens: far above any model's price


def _prices(raw: str) -> dict[str, tuple[Decimal, Decimal]]:
    """LLM_PRICES: `model=prompt/completion` pairs, comma-separated, in USD per million tokens
    (`gpt-4o-mini=0.15/0.60,anthropic/claude-3-haiku=0.25/1.25`)."""
    out: dict[str, tuple[Decimal, Decimal]] = {}
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        model, _, price = item.rpartition("=")
        prompt, slash, completion = price.partition("/")
        try:
            pair = (Decimal(prompt.strip()), Decimal(completion.strip()))
        except InvalidOperation:
            pair = None
        if (
            not model.strip()
            or not slash
            or pair is None
            or any(not p.is_finite() or p < 0 or p > MAX_PRICE for p in pair)
        ):
            raise ConfigError(
                f"LLM_PRICES: {item[:80]!r}: write model=prompt/completion in USD per million"
                " tokens, like gpt-4o-mini=0.15/0.60"
            )
        if model.strip() in out:
            raise ConfigError(f"LLM_PRICES names {model.strip()[:80]!r} twice")
        out[model.strip()] = pair
    return out


def _split(name: str, url: str) -> SplitResult:
    """The parts of a URL; a malformed one is a ConfigError that does not repeat it (it may
    hold a password)."""
    try:
        return urlsplit(url)
    except ValueError as e:
        raise ConfigError(f"{name}: malformed URL ({e})") from None


def _check_http_url(name: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name}={url!r} is not an http(s) URL")
    try:
        parts.port  # noqa: B018
    except ValueError as e:
        raise ConfigError(f"{name}: malformed port ({e})") from e


def _timezone(env: Mapping[str, str]) -> str:
    name = env.get("TIMEZONE", "UTC")
    try:
        ZoneInfo(name)
        return name
    except (ValueError, OSError, ZoneInfoNotFoundError):
        pass
    raise ConfigError(
        f"TIMEZONE={name!r} is not an IANA time zone name (like Asia/Kolkata or Europe/Lisbon)"
    )


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name)
    return Secret(value) if value is not None else None


def _int(
    env: Mapping[str, str], name: str, default: int, *, low: int, high: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name}={value} must be {bounds}")
    return value


_SIZE = re.compile(r"(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?", re.IGNORECASE)
_BYTES = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3}
_BYTES["gib"] = 1024**3


def parse_size(text: str) -> int:
    """'64MB', '512KiB', '1GB' or plain bytes -> bytes. Raises ValueError."""
    found = _SIZE.fullmatch(text.strip())
    if not found:
        raise ValueError(f"{text!r} is not a size like 64MB or 512KiB")
    return int(found.group(1)) * _BYTES[(found.group(2) or "b").lower()]


def _size(env: Mapping[str, str], name: str, default: str) -> int:
    return _parsed(env, name, default, parse_size, least=4 * 2**20, bound="at least 4MiB (a body)")


def _reconcile(env: Mapping[str, str]) -> float:
    value = _parsed(env, "SEND_RECONCILE", "10s", parse_duration, least=0.0, bound="0s or more")
    if value > 60:
        raise ConfigError(
            f"SEND_RECONCILE={env['SEND_RECONCILE']!r}: at most 60s (replies left in flight by "
            "a crash wait this long after a restart)"
        )
    return value


def _duration(env: Mapping[str, str], name: str, default: str) -> float:
    return _parsed(env, name, default, parse_duration, least=1e-9, bound="longer than zero")


def _parsed(
    env: Mapping[str, str],
    name: str,
    default: str,
    parse: Callable[[str], N],
    *,
    least: float,
    bound: str,
) -> N:
    raw = env.get(name, default)
    try:
        value = parse(raw)
    except ValueError as e:
        raise ConfigError(f"{name}: {e}") from None
    if value < least:
        raise ConfigError(f"{name}={raw!r} must be {bound}")
    return value
