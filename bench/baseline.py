"""The baseline for bench/throughput.py: an aiohttp app that checks the signature of a webhook,
parses it and answers 200, and nothing else. The engine's figures are reported against it."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json

from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    secret = args.secret.encode()

    async def webhook(request: web.Request) -> web.Response:
        raw = await request.read()
        given = request.headers.get("X-Hub-Signature-256", "").removeprefix("sha256=")
        if not hmac.compare_digest(given, hmac.new(secret, raw, hashlib.sha256).hexdigest()):
            return web.Response(status=403)
        json.loads(raw)
        return web.Response(text="OK")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/webhooks/whatsapp", webhook)
    app.router.add_get("/readyz", lambda r: web.json_response({"ok": True}))
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
