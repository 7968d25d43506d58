"""/metrics after a scripted run shows what happened, with the values that happened."""

from __future__ import annotations

import io
import re

from prometheus_client.parser import text_string_to_metric_families

from adapters.web import ENGINE
from tests.conftest import AppFactory
from tests.fakes.graph import FakeGraph, meta_error
from tests.support import body, change, payload, signed, status, text


async def test_metrics_after_a_scripted_run(
    start_app: AppFactory, env: dict[str, str], graph: tuple[FakeGraph, str]
) -> None:
    fake, _ = graph
    client = await start_app(env)
    engine = client.app[ENGINE]

    async def post(doc: object, **kw: str) -> None:
        raw, headers = signed(doc, **kw)  # type: ignore[arg-type]
        await client.post("/webhooks/whatsapp", data=io.BytesIO(raw), headers=headers)

    fake.answer_next(meta_error(131026, "undeliverable"))  # the first reply fails for good
    await post(body(change([text("15550000001", "w1", "hi"), text("15550000002", "w2", "hi")])))
    await post(body(change([text("15550000001", "w1", "hi")])))  # duplicate
    await post(payload("reaction"))
    await post(body(change([{"id": "broken"}])))  # malformed item
    await post(body(change([text("15550000003", "w3", "hi")])), secret="wrong")
    await engine.actors.wait_idle()
    await engine.delivery.wait_empty()
    wamid = fake.requests[-1]["wamid"]
    await post(body(change([], statuses=[status(wamid, "read")])))
    await post(payload("value_errors"))

    scrape = await client.get("/metrics")
    assert scrape.status == 200
    page = await scrape.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("engine_webhook_requests_total", provider="meta", result="accepted") == 6
    assert value("engine_webhook_requests_total", provider="meta", result="signature_bad") == 1
    assert value("engine_events_total", type="message.text") == 3
    assert value("engine_events_total", type="message.reaction") == 1
    assert value("engine_events_total", type="status.read") == 1
    assert value("engine_events_total", type="errors") == 1
    assert value("engine_duplicate_events_total", type="message") == 1
    assert value("engine_malformed_items_total") == 1
    assert value("engine_events_handled_total", outcome="answered") == 2
    assert value("engine_events_handled_total", outcome="silent") == 1
    assert value("engine_event_handling_seconds_count") == 3
    assert value("engine_outbound_messages_total", result="accepted", code="") == 1
    assert value("engine_outbound_messages_total", result="failed", code="131026") == 1
    assert value("engine_message_statuses_total", status="read") == 1
    assert value("engine_provider_errors_total", code="130429") == 1
    assert value("engine_actors_resident") == 3
    assert value("engine_machines_live") == 1
    assert value("engine_mailbox_depth") == 0
    assert value("engine_outbox_pending") == 0
    assert 0 < value("engine_store_commits_total") <= value("engine_store_commit_ops_total")
    assert value("process_resident_memory_bytes") > 10_000_000  # the process collector comes along
    assert re.search(r"^engine_gc_pause_seconds_count \d", page, re.M)
