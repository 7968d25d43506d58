"""Reload without restart: POST /api/flows/reload and SIGHUP validate first and swap at once;
conversations keep their state where the new version has it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from adapters.web import ENGINE
from tests.conftest import AppFactory
from tests.fakes.graph import FakeGraph
from tests.process import Server
from tests.support import ADMIN, body, change, eventually, signed, text

V1 = """
start: ask
states:
  ask:
    say: "What size? (v1)"
    on:
      - text: [small, large]
        save: size
        go: done
  done:
    say: "A {size} one (v1)."
    end: true
"""
V2 = V1.replace("(v1)", "(v2)")
BROKEN = V1.replace("go: done", "go: nowhere")


async def reload(client: Any) -> tuple[int, dict[str, Any]]:
    r = await client.post("/api/flows/reload", headers={"Authorization": f"Bearer {ADMIN}"})
    return r.status, await r.json()


async def test_reload_swaps_valid_flows_and_keeps_the_old_ones_when_invalid(
    tmp_path: Path, start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    fake, _ = graph
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "shop.yaml").write_text(V1.lstrip("\n"))
    client = await start_app({**env, "FLOWS_DIR": str(flows), "ENTRY_FLOW": "shop"})
    n = 0

    async def say(words: str) -> str:
        nonlocal n
        n += 1
        raw, headers = signed(body(change([text("15550001", f"wamid.R{n}", words)])))
        assert (await client.post("/webhooks/whatsapp", data=raw, headers=headers)).status == 200
        await eventually(lambda: len(fake.requests) >= n)
        return str(fake.requests[-1]["body"]["text"]["body"])

    assert await say("hi") == "What size? (v1)"
    (flows / "shop.yaml").write_text(BROKEN.lstrip("\n"))
    status, answer = await reload(client)
    assert status == 422
    assert any("go to unknown state 'nowhere'" in p for p in answer["problems"])
    (flows / "shop.yaml").write_text(V2.lstrip("\n"))
    assert await reload(client) == (200, {"flows": ["shop"], "warnings": []})
    assert await say("large") == "A large one (v2)."  # the conversation kept its step
    engine = client.app[ENGINE]
    assert engine.metrics.reloads.values == {("invalid",): 1, ("ok",): 1}
    r = await client.post("/api/flows/reload")
    assert r.status == 401  # the admin token is needed


async def test_sighup_reloads_the_flows_of_a_running_server(
    tmp_path: Path, env: dict[str, str]
) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "shop.yaml").write_text(V1.lstrip("\n"))
    server = Server({**env, "FLOWS_DIR": str(flows), "ENTRY_FLOW": "shop"}, tmp_path)
    await server.start()
    try:
        (flows / "shop.yaml").write_text(BROKEN.lstrip("\n"))
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "flows not reloaded" in server.stderr())
        (flows / "shop.yaml").write_text(V2.lstrip("\n"))
        server.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "flows reloaded: shop" in server.stderr())
        assert server.proc.poll() is None  # still serving
    finally:
        server.terminate()
