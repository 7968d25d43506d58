"""A small OpenAI-compatible server on loopback: POST /v1/chat/completions and /v1/embeddings.

Each model answers by a script: a function of the request's JSON giving either the answer's
text (a completion with usage) or one of the failures below. Every request is recorded (its
model, messages, response_format and headers), so a test can assert what went into a prompt and
which models were tried in which order.

    fake.answer("primary", lambda req: '{"answer": "We deliver on Tuesdays.", "found": true}')
    fake.fail("primary", 500)   # or 429 (with Retry-After), "hang", "drop", "not_json", "empty"
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Script = Callable[[dict[str, Any]], Any]


@dataclass
class Seen:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]

    @property
    def prompt(self) -> str:
        return "\n".join(str(m.get("content")) for m in self.body.get("messages", []))


@dataclass
class FakeOpenAI:
    scripts: dict[str, Script] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    embeddings: Callable[[str], list[float]] | None = None
    url: str = ""
    _runner: web.AppRunner | None = None
    hangs: int = 0  # requests that hung (waiting until the client gave up)
    hold: asyncio.Event | None = None  # set: every answer waits for it
    busy: int = 0  # requests being answered now
    most: int = 0  # the most requests answered at once
    usage: tuple[int, int] | None = None  # (prompt, completion) tokens every answer reports
    delay: float = 0.0  # real seconds every answer takes (benchmarks: a slow model)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    def answer(self, model: str, text: Callable[[dict[str, Any]], str] | str) -> None:
        self.scripts[model] = text if callable(text) else (lambda _req, t=text: t)

    def fail(self, model: str, how: int | str) -> None:
        self.scripts[model] = lambda _req: Failure(how)

    def models_tried(self) -> list[str]:
        return [s.model for s in self.seen if "messages" in s.body]

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embed)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def close(self) -> None:
        self._closing.set()  # hung answers end: the server does not wait for them
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model"))
        self.seen.append(Seen(model, body, dict(request.headers)))
        script = self.scripts.get(model)
        if script is None:
            return web.json_response(
                {"error": {"message": f"model {model} not found", "type": "invalid_request"}},
                status=404,
            )
        got = script(body)
        if isinstance(got, Failure):
            return await got.respond(self, request)
        self.busy += 1
        self.most = max(self.most, self.busy)
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.busy -= 1
        text = str(got)
        prompt, completion = self.usage or (
            len(json.dumps(body["messages"])) // 4,
            max(1, len(text) // 4),
        )
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.seen)}",
                "object": "chat.completion",
                "created": 1_800_000_000,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            }
        )

    async def _embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(Seen(str(body.get("model")), body, dict(request.headers)))
        if self.embeddings is None:
            return web.json_response({"error": {"message": "no embeddings"}}, status=500)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response(
            {
                "object": "list",
                "model": body.get("model"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": self.embeddings(text)}
                    for i, text in enumerate(inputs)
                ],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        )


@dataclass
class Failure:
    how: int | str

    async def respond(self, fake: FakeOpenAI, request: web.Request) -> web.StreamResponse:
        if self.how == "drop":  # the connection closes with no answer
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if self.how == "hang":
            fake.hangs += 1
            await fake._closing.wait()  # until the server is closed (the client gave up)
            return web.Response(status=503)
        if self.how == "not_json":
            return web.Response(text="<html>bad gateway</html>", content_type="application/json")
        if self.how == "empty":
            return web.json_response({"id": "x", "object": "chat.completion", "choices": []})
        status = int(self.how)
        headers = {"Retry-After": "7"} if status == 429 else {}
        return web.json_response(
            {"error": {"message": f"failure {status}", "type": "server_error"}},
            status=status,
            headers=headers,
        )
