"""/readyz reports each dependency: the store always, Redis when REDIS_URL is set."""

from __future__ import annotations

from tests.conftest import AppFactory


async def test_readyz_with_redis(
    start_app: AppFactory, env: dict[str, str], redis_url: str
) -> None:
    env["REDIS_URL"] = redis_url
    client = await start_app(env)
    r = await client.get("/readyz")
    assert r.status == 200
    assert await r.json() == {"store": "ok", "redis": "ok", "accepting": True}


async def test_readyz_without_redis(start_app: AppFactory, env: dict[str, str]) -> None:
    client = await start_app(env)
    assert await (await client.get("/readyz")).json() == {"store": "ok", "accepting": True}
    assert (await client.get("/healthz")).status == 200
