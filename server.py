"""The main job: `python server.py` serves webhooks, the admin API, health and metrics on :8080.

This is the composition root, the only module that imports both the engine and its adapters.
Everything is built from `Settings.from_env(os.environ)`; a configuration that cannot work
(a bad URL, a Postgres or Redis that is down, a flow that does not validate, an unwritable
SQLite path, a port in use) stops the process with one line on stderr and exit code 2.

SIGHUP reloads the flows (as `POST /api/flows/reload` does). SIGTERM (and Ctrl-C) stops
intake (`/readyz` and webhooks answer 503), drains the mailboxes
and the outbox, and exits within 10 seconds.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import aiohttp
import redis.asyncio as redis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from adapters.bodies import BodyBudget
from adapters.channels.console import ConsoleSender
from adapters.channels.twilio import Channels, TwilioSender
from adapters.channels.whatsapp import AccessToken, CloudApiSender
from adapters.http_action import HttpAction
from adapters.llm.openai_chat import OpenAiChat
from adapters.orders_api import add_order_routes
from adapters.prometheus import EngineCollector
from adapters.stores.postgres import PostgresStore
from adapters.stores.redis_cache import RedisCachedStore
from adapters.stores.sqlite import SqliteStore
from adapters.web import (
    BODIES,
    CONFIG,
    ENGINE,
    HEALTH,
    MAX_BODY,
    RELOAD,
    Health,
    WebConfig,
    add_routes,
    channel_health,
    quiet_client_errors,
    reload_flows,
)
from engine.clock import SystemClock
from engine.engine import Engine, EngineConfig
from engine.errors import ConfigError
from engine.flows import Flows, load_flows
from engine.llm.knowledge import Knowledge
from engine.llm.prompts import Redactor
from engine.llm.service import Llm, LlmConfig
from engine.logs import setup_logging
from engine.metrics import GcTimer, Metrics
from engine.ports import Clock, Sender, Store
from engine.settings import Settings

log = logging.getLogger("server")

DRAIN_SECONDS = 7.0  # of the 10 s budget: mailboxes and outbox
STOP_GRACE = 1.0  # sends under way may finish


def create_app(settings: Settings, *, clock: Clock | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[CONFIG] = WebConfig(
        verify_token=settings.whatsapp_verify_token,
        app_secret=settings.whatsapp_app_secret,
        admin_token=settings.admin_token,
        default_number=settings.whatsapp_phone_number_id,
        twilio_token=settings.twilio_auth_token,
        public_url=settings.public_url,
    )
    app[HEALTH] = Health()
    app[BODIES] = BodyBudget(settings.max_body_memory, settings.http_read_timeout)
    quiet_client_errors()

    async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            secret = settings.actions_secret
            http = HttpAction(clock or SystemClock(), secret.reveal() if secret else None)
            stack.push_async_callback(http.close)
            metrics = Metrics()
            llm = make_llm(settings, clock or SystemClock(), metrics)
            if llm is not None:
                stack.push_async_callback(llm.close)
            provided = {"http": http.call, **(llm.actions() if llm is not None else {})}
            load: Callable[[], Flows] = partial(load_all, settings, provided, llm)
            flows = load()
            app[RELOAD] = load
            for warning in flows.warnings:
                log.warning("flow %s", warning)
            client = await stack.enter_async_context(_redis(settings, app[HEALTH]))
            store = await open_store(settings, client, metrics, clock)
            stack.push_async_callback(store.close)
            if llm is not None:  # the last turns of a conversation go with each call
                llm.history = store.transcript
            session = await stack.enter_async_context(aiohttp.ClientSession())
            sender = make_sender(settings, session)
            engine = Engine(
                store=store,
                sender=sender,
                flows=flows,
                metrics=metrics,
                config=EngineConfig(
                    handoff_ttl=settings.handoff_ttl,
                    max_actors=settings.max_actors,
                    send_concurrency=settings.send_concurrency,
                    max_backlog=settings.max_backlog,
                    dedupe_ttl=settings.dedupe_ttl,
                    journal_retention=settings.journal_retention,
                    send_max_age=settings.send_max_age,
                    send_reconcile=settings.send_reconcile,
                    send_rate=settings.send_rate,
                    llm_daily_calls=settings.llm_daily_calls,
                ),
                clock=clock,
            )
            app[ENGINE] = engine
            app[HEALTH].checks["store"] = engine.store_ready
            if settings.sender == "whatsapp":
                app[HEALTH].checks["whatsapp"] = partial(channel_health, engine, twilio=False)
            if settings.twilio_account_sid is not None:
                app[HEALTH].checks["twilio"] = partial(channel_health, engine, twilio=True)
                if settings.public_url is None:
                    log.warning("PUBLIC_URL is not set: Twilio webhooks will be refused (403)")
            collector = EngineCollector(metrics)
            collector.register()
            stack.callback(collector.unregister)
            gc_timer = GcTimer(metrics.gc_pause)
            gc_timer.install()
            stack.callback(gc_timer.uninstall)
            stack.push_async_callback(engine.close, STOP_GRACE)
            await engine.start()
            # Modules, flows and machines built at start live as long as the process: move them
            # out of the collector's sight so full collections only walk what can die.
            gc.collect()
            gc.freeze()
            announce(settings, llm)
            yield

    app.cleanup_ctx.append(engine_ctx)
    add_routes(app)
    add_order_routes(app, ZoneInfo(settings.timezone))
    return app


def load_all(settings: Settings, provided: dict[str, Any], llm: Llm | None) -> Flows:
    """The flows, at start and on each reload; with a model, the documents are read again."""
    flows = load_flows(
        settings.flows_dir,
        settings.entry_flow,
        provided,
        ZoneInfo(settings.timezone),
        media=Path(settings.media_dir),
    )
    if llm is not None:
        llm.use(knowledge(settings))
    return flows


def make_llm(settings: Settings, clock: Clock, metrics: Metrics) -> Llm | None:
    """The model, when OPENAI_API_KEY is set; without one the flows take their non-LLM paths.
    Nothing here calls the model: one that is down is never a start error."""
    key = settings.openai_api_key
    if key is None:
        return None
    config = LlmConfig(
        models=settings.llm_models,
        timeout=settings.llm_timeout,
        concurrency=settings.llm_concurrency,
        top_k=settings.llm_top_k,
        embedding_model=settings.llm_embedding_model,
        prices=settings.llm_prices,
    )
    model = OpenAiChat(key.reveal(), settings.openai_base_url)
    return Llm(model, config, clock=clock, metrics=metrics, redact=Redactor(settings.secrets()))


def announce(settings: Settings, llm: Llm | None) -> None:
    """What is missing or on, once the engine has started."""
    if settings.whatsapp_app_secret is None:
        log.warning("WHATSAPP_APP_SECRET is not set: every Meta webhook will be refused")
    if llm is None:
        log.info("no OPENAI_API_KEY: flows take their non-LLM paths")
        return
    c = llm.config
    log.info(
        "llm: %s within %.0fs a turn, at most %d calls in flight, %d a contact a day;"
        " knowledge: %d passages",
        " then ".join(c.models),
        c.timeout,
        c.concurrency,
        settings.llm_daily_calls,
        len(llm.knowledge),
    )


def knowledge(settings: Settings) -> Knowledge:
    found = Knowledge.load(settings.knowledge_dir, settings.llm_passage_chars)
    sources = {p.source for p in found.passages}
    if found.passages:
        log.info(
            "knowledge: %d passages from %d documents in %s",
            len(found),
            len(sources),
            settings.knowledge_dir,
        )
    else:
        log.warning(
            "knowledge: no documents in %s (KNOWLEDGE_DIR); answer: steps take on_unknown:",
            settings.knowledge_dir,
        )
    return found


async def open_store(
    settings: Settings,
    redis_client: Any = None,
    metrics: Metrics | None = None,
    clock: Clock | None = None,
) -> Store:
    """The store DATABASE_URL names; with REDIS_URL, behind Redis as its hot tier."""
    database = settings.database
    store: Store
    if database.kind == "sqlite":
        assert database.path is not None
        store = SqliteStore(database.path, synchronous=settings.sqlite_synchronous)
    else:
        assert database.dsn is not None
        store = PostgresStore.from_url(database.dsn.reveal())
    if redis_client is not None:  # keys of their own per database: engines may share a Redis
        name = database.dsn.reveal() if database.dsn is not None else str(database.path)
        where = hashlib.sha256(name.encode()).hexdigest()[:10]
        store = RedisCachedStore(
            store,
            redis_client,
            dedupe_ttl=settings.dedupe_ttl,
            prefix=f"wa-engine:{where}",
            metrics=metrics,
            clock=clock,
        )
    await store.open()
    return store


class _redis:
    """Redis, when REDIS_URL is set: checked at start and by /readyz."""

    def __init__(self, settings: Settings, health: Health) -> None:
        self._url = settings.redis_url
        self._health = health
        self._client: Any = None

    async def __aenter__(self) -> Any:
        if self._url is None:
            return None
        # A cache must answer at once or be skipped: a stalled Redis costs a write at most 1 s,
        # then it is left alone for a few seconds (adapters/stores/redis_cache.py).
        try:
            self._client = redis.from_url(
                self._url.reveal(),
                socket_connect_timeout=1,
                socket_timeout=1,
                # No silent retries: a Redis that restarted must show as an error, so the hot
                # tier stops trusting what it held (and a stall costs one timeout, not ten).
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as e:  # an option in the URL redis cannot read
            raise ConfigError(f"REDIS_URL: {e}") from None
        try:
            await self._client.ping()
        except (redis.AuthenticationError, redis.ResponseError) as e:  # it answers: a bad URL
            await self._client.aclose()
            raise ConfigError(f"REDIS_URL: Redis refuses this engine: {e}") from e
        except (redis.RedisError, OSError) as e:
            # Redis is a cache: the store serves meanwhile, and Redis is used once it answers.
            log.warning("REDIS_URL: cannot reach Redis (%s); starting without it", e)
        self._health.checks["redis"] = self._ping
        return self._client

    async def _ping(self) -> str | None:
        """Redis is a cache of the store: while it is down the engine reads the store, so
        readiness says "degraded" (200) rather than take the engine out of service."""
        try:
            await asyncio.wait_for(self._client.ping(), 1.5)
        except (redis.RedisError, OSError, TimeoutError) as e:
            name = type(e).__name__
            return f"Redis unreachable ({name}); snapshots and seen ids come from the store"
        return None

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()


def media_folder(settings: Settings) -> Path:
    """MEDIA_DIR, made if it does not exist yet; one that cannot be a folder stops the start."""
    folder = Path(settings.media_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"MEDIA_DIR={settings.media_dir!r}: cannot be a folder ({e})") from e
    return folder


def make_sender(settings: Settings, session: aiohttp.ClientSession) -> Sender:
    """The channels: a reply leaves on its conversation's (Twilio numbers are E.164); SENDER
    picks Meta's or the console for the rest."""
    media = media_folder(settings)
    meta: Sender
    if settings.sender == "whatsapp" or (
        settings.sender == "twilio" and settings.whatsapp_access_token
    ):
        token = AccessToken(settings.whatsapp_access_token, settings.whatsapp_access_token_file)
        meta = CloudApiSender(session, settings.whatsapp_api_url, token, media_dir=media)
    else:
        meta = ConsoleSender(media_dir=media)
    if settings.twilio_account_sid is None or settings.twilio_auth_token is None:
        return meta
    twilio = TwilioSender(
        session,
        settings.twilio_api_url,
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        public_url=settings.public_url,
    )
    return Channels(meta, twilio)


async def serve(settings: Settings) -> int:
    app = create_app(settings)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
        # A connection must send a request's headers within this time (from connecting, or
        # from the previous response); aiohttp closes idle or trickling connections after it.
        keepalive_timeout=settings.http_read_timeout,
    )
    # The port first: a second engine started by mistake must stop before it touches the store
    # (its outbox replay would send every pending reply a second time).
    try:
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        sock = socket.create_server((settings.host, settings.port), family=family, backlog=1024)
    except OSError as e:
        print(
            f"engine: cannot listen on {settings.host}:{settings.port}: {e.strerror or e}",
            file=sys.stderr,
        )
        return 2
    try:
        await runner.setup()
    except ConfigError as e:
        sock.close()
        print(f"engine: {e}", file=sys.stderr)
        return 2
    site = web.SockSite(runner, sock)
    await site.start()
    redis_at = ""
    if settings.redis_url is not None:
        parts = urlsplit(settings.redis_url.reveal())
        redis_at = f", redis at {parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path}"
    log.info(
        "listening on %s:%d (%s%s, sender %s, entry flow %s)",
        settings.host,
        settings.port,
        settings.database.describe(),
        redis_at,
        settings.sender + (" and twilio" if settings.twilio_account_sid else ""),
        settings.entry_flow,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # SIGHUP: load FLOWS_DIR again; swapped in only if it validates (the log says which).
    loop.add_signal_handler(signal.SIGHUP, partial(reload_flows, app))
    await stop.wait()
    started = time.monotonic()
    log.info("stopping: intake closed, draining mailboxes and the outbox")
    engine = app[ENGINE]
    drained = await engine.drain(DRAIN_SECONDS)
    if not drained:
        log.warning("drain timed out; what is left resumes at the next start")
    elif engine.delivery.pending:
        log.info(
            "%d replies held for paused numbers stay in the outbox; sent after the next start",
            engine.delivery.pending,
        )
    await runner.cleanup()
    log.info("stopped in %.1fs", time.monotonic() - started)
    return 0


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as e:
        print(f"engine: {e}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.secrets())
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
