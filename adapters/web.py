"""HTTP: the Meta webhook, the admin/agent API, health and metrics.

Webhook handlers only verify, translate and hand over: the body is checked against its
signature, parsed into events, recorded by the engine (one group commit), and answered. No flow
step, LLM call or send ever runs inside a request.

Anyone on the internet can reach these routes, so everything a request can decide from its
headers is decided before its body is read (a missing or malformed signature, a full backlog),
bodies are read under one budget for all requests (`adapters.bodies`), and nothing a client
sends, however malformed, is answered with a 500 or logged with a traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_async.aio.web import server_stats

from engine.engine import Ambiguous, Engine, NotFound, iso
from engine.errors import (
    ActorStopped,
    ConfigError,
    EngineError,
    FlowError,
    StoreRejected,
    StoreUnavailable,
)
from engine.events import Event, StatusUpdate, scrub
from engine.flows import Flows, Template
from engine.outbound import TemplateMessage
from engine.settings import Secret

from .bodies import BodyBudget, BodyRefused, ClientGone, loads
from .channels import twilio
from .channels.meta import parse_body, signature_digest

log = logging.getLogger(__name__)


class Throttled:
    """A warning a stranger can trigger at will (an unverified request meeting a full backlog):
    logged at most once per `every` seconds, with how many were left out meanwhile."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._last: float | None = None
        self.left_out = 0

    def warn(self, message: str) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._every:
            self.left_out += 1
            return
        more = f" ({self.left_out} more since the last such line)" if self.left_out else ""
        self._last, self.left_out = now, 0
        log.warning("%s%s", message, more)


_OVERLOADED = Throttled()
_HELD = Throttled()
_TWILIO_OFF = Throttled()
MAX_TWILIO_BODY = 1024 * 1024  # a Twilio webhook is a form of a few kilobytes
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


MAX_BODY = 4 * 1024 * 1024  # Meta sends up to 3 MB; aiohttp's default limit is 1 MiB
MAX_API_BODY = 1024 * 1024
MAX_AGENT_TEXT = 16 * 4096
MAX_TRANSCRIPT = 10_000  # messages GET /api/conversations/{contact} returns at most


@dataclass(frozen=True, slots=True)
class WebConfig:
    verify_token: Secret | None
    app_secret: Secret | None
    admin_token: Secret | None
    default_number: str | None = None  # WHATSAPP_PHONE_NUMBER_ID: picks among several numbers
    twilio_token: Secret | None = None  # TWILIO_AUTH_TOKEN: signs Twilio's webhooks
    public_url: str | None = None  # PUBLIC_URL: the base of the URL Twilio signs


class Health:
    """Readiness probes, one per dependency. A probe returns None when its part is fine, a reason
    when the part is degraded (reported; the engine stays ready, so webhooks keep flowing) and
    raises when the part is down (503)."""

    def __init__(self) -> None:
        self.checks: dict[str, Callable[[], Awaitable[str | None]]] = {}


ENGINE = web.AppKey("engine", Engine)
# Loads FLOWS_DIR again (raising FlowError when it does not validate); set by the composition root.
RELOAD: web.AppKey[Callable[[], Flows]] = web.AppKey("reload_flows")
CONFIG = web.AppKey("web_config", WebConfig)
HEALTH = web.AppKey("health", Health)
BODIES = web.AppKey("bodies", BodyBudget)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/webhooks/whatsapp", whatsapp_verify)
    app.router.add_post("/webhooks/whatsapp", whatsapp_post)
    app.router.add_post("/webhooks/twilio", twilio_post)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", server_stats)
    app.router.add_get("/api/conversations", api_list)
    app.router.add_get("/api/conversations/{contact}", api_show)
    app.router.add_post("/api/conversations/{contact}/messages", api_reply)
    app.router.add_post("/api/conversations/{contact}/release", api_release)
    app.router.add_post("/api/flows/reload", api_reload)
    app.middlewares.append(admin_auth)


# --- Meta webhook ----------------------------------------------------------------------------


async def whatsapp_verify(request: web.Request) -> web.Response:
    expected = request.app[CONFIG].verify_token
    q = request.query
    challenge = q.get("hub.challenge", "")
    if (
        expected is not None
        and q.get("hub.mode") == "subscribe"
        and challenge
        and same(q.get("hub.verify_token", ""), expected.reveal())
    ):
        return web.Response(text=challenge, content_type="text/plain")
    return web.Response(status=403, text="verification failed", content_type="text/plain")


async def whatsapp_post(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    secret = request.app[CONFIG].app_secret
    count = engine.metrics.webhook_requests.inc
    if secret is None:
        count("meta", "refused")
        return _text(403, "WHATSAPP_APP_SECRET is not set: webhooks are refused")
    digest = signature_digest(request.headers.get("X-Hub-Signature-256"))
    if isinstance(digest, str):  # missing or malformed: no need to read a byte of the body
        count("meta", f"signature_{digest}")
        return _text(401 if digest == "missing" else 403, f"signature {digest}")
    if not engine.accepting:
        count("meta", "unavailable")
        return _text(503, "not accepting (starting or stopping)", retry_after=5)
    if engine.overloaded:
        # Meta keeps retrying for days; holding the work there beats growing without bound here.
        count("meta", "overloaded")
        _OVERLOADED.warn(f"backlog of {engine.backlog} over MAX_BACKLOG: webhooks refused with 503")
        return _text(503, "backlog full, retry later", retry_after=30)
    try:
        async with request.app[BODIES].read(request, MAX_BODY) as raw:
            expected = hmac.new(secret.reveal().encode(), raw, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(digest, expected.encode("ascii")):
                count("meta", "signature_bad")
                return _text(403, "signature bad")
            return await _accept(engine, raw)
    except BodyRefused as e:
        count("meta", e.result)
        return _text(e.status, str(e), retry_after=e.retry_after)
    except ClientGone as e:
        count("meta", "client_gone")
        log.debug("webhook from %s abandoned mid-body: %s", request.remote, e)
        return _text(400, "incomplete body")


async def _accept(engine: Engine, raw: bytearray) -> web.Response:
    parsed = parse_body(raw)
    for bad in parsed.malformed:
        engine.metrics.malformed.inc()
        log.warning("malformed webhook item at %s: %s", bad.where, bad.reason)
    refused = await _ingest(engine, "meta", parsed.events)
    return refused or _text(200, "OK")


async def _ingest(engine: Engine, provider: str, events: list[Event]) -> web.Response | None:
    """Record `events` durably: None when they are, else the 503 to answer."""
    count = engine.metrics.webhook_requests.inc
    if engine.refuses(events):
        count(provider, "overloaded")
        _HELD.warn("a paused number holds over MAX_BACKLOG replies: its webhooks refused with 503")
        return _text(503, "backlog full for this number, retry later", retry_after=30)
    try:
        await engine.ingest(events)
    except StoreUnavailable as e:
        count(provider, "unavailable")  # the committer logs the store's state, once
        log.debug("webhook not accepted: %s", e)
        return _text(503, "cannot record events now", retry_after=5)
    count(provider, "accepted")
    return None


# --- Twilio webhook --------------------------------------------------------------------------


async def twilio_post(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    config = request.app[CONFIG]
    count = engine.metrics.webhook_requests.inc
    token, public = config.twilio_token, config.public_url
    if token is None or public is None:
        count("twilio", "refused")
        missing = " and ".join(
            n for n, v in (("TWILIO_AUTH_TOKEN", token), ("PUBLIC_URL", public)) if v is None
        )
        _TWILIO_OFF.warn(f"a Twilio webhook was refused: {missing} not set")
        return _text(403, f"Twilio webhooks are refused: {missing} not set")
    given = request.headers.get("X-Twilio-Signature")
    if not given:
        count("twilio", "signature_missing")
        return _text(401, "signature missing")
    if not engine.accepting:
        count("twilio", "unavailable")
        return _text(503, "not accepting (starting or stopping)", retry_after=5)
    if engine.overloaded:
        count("twilio", "overloaded")
        return _text(503, "backlog full, retry later", retry_after=30)
    try:
        async with request.app[BODIES].read(request, MAX_TWILIO_BODY) as raw:
            body = bytes(raw)
    except BodyRefused as e:
        count("twilio", e.result)
        return _text(e.status, str(e), retry_after=e.retry_after)
    except ClientGone:
        count("twilio", "client_gone")
        return _text(400, "incomplete body")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    url = public + request.raw_path  # what Twilio called: PUBLIC_URL, path and query
    if not twilio.valid(token.reveal(), url, fields, given, body):
        count("twilio", "signature_bad")
        return _text(403, "signature bad")
    events, problems = twilio.parse_form(
        {k: v[0] for k, v in fields.items()}, int(engine.clock.now())
    )
    for problem in problems:
        engine.metrics.malformed.inc()
        log.warning("malformed Twilio webhook: %s", problem)
    ref = request.query.get("ref")  # the id we sent, on a status callback's URL
    if ref:
        events = [
            dataclasses.replace(e, callback_data=ref) if isinstance(e, StatusUpdate) else e
            for e in events
        ]
    refused = await _ingest(engine, "twilio", events)
    return refused or web.Response(text=EMPTY_TWIML, content_type="text/xml")


def same(given: str, expected: str) -> bool:
    """Compare a secret in constant time, whatever bytes the client put in `given`."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def _text(status: int, text: str, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    response = web.Response(status=status, text=text, content_type="text/plain", headers=headers)
    if status != 200:
        # A refused request may still be sending its body: close instead of reading the rest.
        response.force_close()
    return response


class QuietClientErrors(logging.Filter):
    """aiohttp logs a request it cannot parse (its head or its body's framing), or a client that
    vanished, as an ERROR with a traceback: that is what strangers send, not a fault of ours.
    Such records become one INFO line; a handler that raised (a bug of ours) keeps its
    traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError | web.RequestPayloadError | ConnectionError):
            detail = getattr(error, "message", "") or str(error)
            said = record.getMessage()
            record.msg = "%s (%s: %s)"
            record.args = (said, type(error).__name__, " ".join(str(detail).split())[:200])
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_client_errors() -> None:
    """Install QuietClientErrors on aiohttp's server logger (once)."""
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, QuietClientErrors) for f in server_log.filters):
        server_log.addFilter(QuietClientErrors())


# --- health ----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    report: dict[str, Any] = {}
    ok = True
    for name, check in request.app[HEALTH].checks.items():
        try:
            reason = await asyncio.wait_for(check(), timeout=2.0)
        except Exception as e:
            ok = False
            said = str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"
            report[name] = f"down: {said}"[:300]
        else:
            report[name] = "ok" if reason is None else f"degraded: {reason}"[:1000]
    accepting = request.app[ENGINE].accepting
    report["accepting"] = accepting
    return web.json_response(report, status=200 if ok and accepting else 503)


async def channel_health(engine: Engine, twilio: bool | None = None) -> str | None:
    """Why sending is paused, per business number (Meta's, or with `twilio` Twilio's, whose
    numbers are E.164; None: all); None while every such number sends."""
    paused = [
        p for p in engine.delivery.paused() if twilio is None or p.number.startswith("+") == twilio
    ]
    if not paused:
        return None
    return "; ".join(
        f"{p.cause} on number {p.number} since {iso(p.since)}: {p.detail}"
        f" ({p.waiting} contacts waiting)"
        for p in paused
    )


# --- admin and agent API ---------------------------------------------------------------------


@web.middleware
async def admin_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    token = request.app[CONFIG].admin_token
    if token is None:
        return _error(403, "the admin API is disabled: set ADMIN_TOKEN")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not same(given.strip(), token.reveal()):
        return _error(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def reload_flows(app: web.Application) -> tuple[bool, list[str], list[str]]:
    """Load the flows again and swap them in only if they all validate:
    (swapped, problems, warnings). The old flows stay when anything is wrong."""
    engine = app[ENGINE]
    try:
        flows = app[RELOAD]()
        engine.reload(flows)
    except FlowError as e:
        engine.metrics.reloads.inc("invalid")
        log.warning("flows not reloaded: %d problem(s), first %s", len(e.problems), e.problems[0])
        return False, [str(p) for p in e.problems], []
    except (ConfigError, ValueError) as e:
        engine.metrics.reloads.inc("invalid")
        log.warning("flows not reloaded: %s", e)
        return False, [str(e)], []
    engine.metrics.reloads.inc("ok")
    return True, [], [str(w) for w in flows.warnings]


async def api_reload(request: web.Request) -> web.Response:
    swapped, problems, warnings = reload_flows(request.app)
    if not swapped:
        return _error(422, "the flows do not validate; the running ones stay", problems=problems)
    flows = request.app[ENGINE].flows
    return web.json_response({"flows": sorted(flows.by_name), "warnings": warnings})


async def api_list(request: web.Request) -> web.Response:
    q = request.query
    handoff = None
    if "handoff" in q:
        if q["handoff"].lower() not in ("true", "false", "1", "0"):
            return _error(400, "handoff must be true or false")
        handoff = q["handoff"].lower() in ("true", "1")
    try:
        limit = min(max(int(q.get("limit", "100")), 1), 1000)
    except ValueError:
        return _error(400, "limit must be a whole number")
    rows = await request.app[ENGINE].listing(state=q.get("state"), handoff=handoff, limit=limit)
    return web.json_response({"conversations": rows})


async def _find(request: web.Request) -> str | web.Response:
    engine, contact = request.app[ENGINE], request.match_info["contact"].lstrip("+")
    try:
        return await engine.find(contact, request.query.get("number"))
    except NotFound:
        return _error(404, "no conversation with this contact")
    except Ambiguous as e:
        default = request.app[CONFIG].default_number
        if default in e.numbers:  # WHATSAPP_PHONE_NUMBER_ID is the number to use by default
            return await engine.find(contact, default)
        return _error(
            409, "several business numbers talk to this contact: add ?number=", numbers=e.numbers
        )


async def api_show(request: web.Request) -> web.Response:
    key = await _find(request)
    if isinstance(key, web.Response):
        return key
    try:
        limit = min(max(int(request.query.get("limit", "200")), 1), MAX_TRANSCRIPT)
    except ValueError:
        return _error(400, "limit must be a whole number")
    return web.json_response(await request.app[ENGINE].view(key, limit))


async def api_reply(request: web.Request) -> web.Response:
    key = await _find(request)
    if isinstance(key, web.Response):
        return key
    data = await read_json(request, '{"text": "..."}')
    if isinstance(data, web.Response):
        return data
    text = data.get("text")
    template = None
    try:
        if "template" in data:
            template = _template(request.app[ENGINE].flows.templates, data["template"])
    except ValueError as e:
        return _error(400, str(e))
    wrong = _check_reply(text, template)
    if wrong is not None:
        return wrong
    try:
        result = await request.app[ENGINE].agent_reply(
            key, scrub(text) if text is not None else None, template
        )
    except ActorStopped:
        return _error(503, "the engine is stopping; try again")
    except StoreRejected as e:
        return _error(422, f"the message could not be stored: {e}")
    return web.json_response(result)


async def read_json(request: web.Request, like: str) -> dict[str, Any] | web.Response:
    """An admin request's JSON object, read within the body budget (MAX_API_BODY, the memory
    and time limits of every body), or the error to answer; `like` shows what to send."""
    try:
        async with request.app[BODIES].read(request, MAX_API_BODY) as raw:
            data = loads(raw)
    except BodyRefused as e:
        headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
        refused = _error(e.status, str(e), headers=headers)
        refused.force_close()
        return refused
    except ClientGone:
        gone = _error(400, "incomplete body")
        gone.force_close()
        return gone
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _error(400, f"send JSON like {like}")
    if not isinstance(data, dict):
        return _error(400, f"send JSON like {like}")
    return data


def _template(templates: dict[str, Template], data: Any) -> TemplateMessage:
    """An approved template filled from the agent API's JSON {name, params, header,
    buttons}; raise ValueError saying what does not match templates.yaml."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise ValueError('template must be {"name": ..., "params": [...] or {...}}')
    unknown = sorted(set(data) - {"name", "params", "header", "buttons"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in template (name, params, header, buttons)")
    known = templates.get(data["name"])
    if known is None:
        names = ", ".join(sorted(templates)) or "none"
        raise ValueError(f"no template {data['name']!r} in templates.yaml (declared: {names})")
    params = data.get("params", [])
    header = data.get("header")
    buttons = data.get("buttons", [])
    texts = list(params.values()) if isinstance(params, dict) else params
    if not isinstance(texts, list) or not all(isinstance(v, str) for v in texts):
        raise ValueError("params must be a list of strings or an object of strings")
    if header is not None and not isinstance(header, str):
        raise ValueError("header must be a string (a link or media id for media)")
    if not isinstance(buttons, list) or not all(isinstance(v, str) for v in buttons):
        raise ValueError("buttons must be a list of strings")
    return known.fill(params, header, buttons)


def _check_reply(text: Any, template: Any) -> web.Response | None:
    if text is None and template is None:
        return _error(400, "text must be a non-empty string (or give a template)")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        return _error(400, "text must be a non-empty string")
    if text is not None and len(text) > MAX_AGENT_TEXT:
        return _error(413, f"text longer than {MAX_AGENT_TEXT} characters")
    return None


async def api_release(request: web.Request) -> web.Response:
    key = await _find(request)
    if isinstance(key, web.Response):
        return key
    try:
        result = await request.app[ENGINE].release(key)
    except ActorStopped:
        return _error(503, "the engine is stopping; try again")
    return web.json_response(result)
