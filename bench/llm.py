"""Contacts that do not use the model keep their throughput while others wait on a slow one;
and what the LLM path costs beyond the model's own time.

Run from the repository root: `python bench/llm.py` (about a minute). In one process: the engine
on an SQLite file, the real `openai` client talking over loopback to the fake
OpenAI-compatible server of the tests, and the shipped knowledge (flows/knowledge).

    throughput: F contacts each send R messages that need no model, one after the other
                (send, wait for the reply), alone, then again while S other contacts keep
                asking questions of a model that takes --delay seconds (2 s by default);
                messages answered a second, median of --repeat runs each, and the ratio
    overhead:   one contact's question answered by a model that answers at once, against a
                message that needs no model: median milliseconds from the message to its
                reply (the model's time on the fake is ~0, so the difference is the LLM
                path: retrieval, prompt, the HTTP call, JSON, the call's own commit)
    retrieval:  BM25 over 1,000 and 10,000 passages, median microseconds a question
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.llm.openai_chat import OpenAiChat  # noqa: E402
from adapters.stores.sqlite import SqliteStore  # noqa: E402
from engine.clock import SystemClock  # noqa: E402
from engine.engine import Engine, EngineConfig  # noqa: E402
from engine.events import Customer, Message, Text  # noqa: E402
from engine.flows import load_flows  # noqa: E402
from engine.llm.knowledge import Knowledge, Passage  # noqa: E402
from engine.llm.service import Llm, LlmConfig  # noqa: E402
from engine.metrics import Metrics  # noqa: E402
from engine.ports import Outgoing  # noqa: E402
from tests.fakes.openai import FakeOpenAI  # noqa: E402

FLOW = """
start: menu
states:
  menu:
    say: "Ready."
    on:
      - text: ping
        say: pong
        go: menu
      - regex: "\\\\?$"
        go: answering
  answering:
    answer: true
    on_done: menu
    on_unknown: menu
    on_error: menu
"""
QUESTION = "When do you deliver, and is delivery free?"


class Timed:
    """A sender that notes when each contact's replies arrive."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.waiters: dict[str, tuple[int, asyncio.Future[float]]] = {}

    async def send(self, out: Outgoing) -> str:
        n = self.counts.get(out.contact, 0) + 1
        self.counts[out.contact] = n
        waiting = self.waiters.get(out.contact)
        if waiting is not None and n >= waiting[0] and not waiting[1].done():
            waiting[1].set_result(time.perf_counter())
        return f"wamid.{out.id}"

    async def close(self) -> None:
        pass

    def until(self, contact: str, n: int) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self.counts.get(contact, 0) >= n:
            future.set_result(time.perf_counter())
        else:
            self.waiters[contact] = (n, future)
        return future


class Bench:
    def __init__(self, engine: Engine, sender: Timed) -> None:
        self.engine, self.sender = engine, sender
        self.n = 0

    async def say(self, phone: str, words: str, replies: int = 1) -> float:
        """Send `words`; seconds until its `replies` replies have gone."""
        key = f"n:{phone}"
        want = self.sender.counts.get(key, 0) + replies
        self.n += 1
        m = Message(f"b{self.n}", int(time.time()), Customer("n", phone=phone), Text(words))
        started = time.perf_counter()
        done = self.sender.until(key, want)
        await self.engine.ingest([m])
        return await asyncio.wait_for(done, 60) - started


async def engine_for(folder: Path, fake: FakeOpenAI, tag: str) -> tuple[Bench, Llm, Any]:
    clock = SystemClock()
    llm = Llm(
        OpenAiChat("sk-bench", fake.url),
        LlmConfig(models=("model",), timeout=10.0, concurrency=64),
        clock=clock,
        metrics=Metrics(),
        knowledge=Knowledge.load(ROOT / "flows" / "knowledge"),
    )
    store = SqliteStore(folder / f"{tag}.sqlite3")
    await store.open()
    sender = Timed()
    engine = Engine(
        store=store,
        sender=sender,  # type: ignore[arg-type]
        flows=load_flows(folder, "bench", llm.actions()),
        clock=clock,
        config=EngineConfig(send_rate=100_000, llm_daily_calls=1_000_000),
    )
    llm.history = store.transcript
    await engine.start()

    async def close() -> None:
        await engine.close()
        await store.close()
        await llm.close()

    return Bench(engine, sender), llm, close


async def throughput(
    folder: Path, fast: int, rounds: int, slow: int, *, delay: float, tag: str
) -> float:
    fake = FakeOpenAI(delay=delay)
    fake.answer("model", json.dumps({"answer": "We deliver on weekdays.", "found": True}))
    await fake.start()
    bench, _llm, close = await engine_for(folder, fake, tag)
    try:
        phones = [f"1{i:06d}" for i in range(fast)]
        askers = [f"2{i:06d}" for i in range(slow)]
        await asyncio.gather(*(bench.say(p, "hi") for p in phones + askers))
        stop = asyncio.Event()

        async def ask(phone: str) -> None:
            while not stop.is_set():
                await bench.say(phone, QUESTION, 2)

        asking = [asyncio.create_task(ask(p)) for p in askers]
        if slow:
            await asyncio.sleep(min(delay, 0.5))  # the model calls are under way

        async def pings(phone: str) -> None:
            for _ in range(rounds):
                await bench.say(phone, "ping", 2)

        started = time.perf_counter()
        await asyncio.gather(*(pings(p) for p in phones))
        took = time.perf_counter() - started
        in_flight = fake.busy
        stop.set()
        await asyncio.gather(*asking)
        if slow:
            assert in_flight > 0, "no model call was waiting while the pings ran"
        return fast * rounds / took
    finally:
        await close()
        await fake.close()


async def overhead(folder: Path, samples: int) -> tuple[float, float, int]:
    fake = FakeOpenAI()
    fake.answer("model", json.dumps({"answer": "We deliver on weekdays.", "found": True}))
    await fake.start()
    bench, _llm, close = await engine_for(folder, fake, "overhead")
    try:
        await bench.say("3000001", "hi")
        plain, model = [], []
        for _ in range(samples):
            plain.append(await bench.say("3000001", "ping", 2))
            model.append(await bench.say("3000001", QUESTION, 2))
        prompt = sum(len(m["content"]) for m in fake.seen[-1].body["messages"])
        return statistics.median(plain) * 1000, statistics.median(model) * 1000, prompt
    finally:
        await close()
        await fake.close()


def retrieval(passages: int, questions: int, seed: int = 7) -> tuple[float, float]:
    """Median microseconds a question over `passages` passages of 60 words: words drawn from a
    vocabulary of 5,000 with Zipf's law (as in real text), and the worst case, where every
    passage holds every word of the question."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    zipf = Knowledge.of(
        [
            Passage(f"doc{i // 20}.md", "", " ".join(rng.choices(vocab, weights, k=60)))
            for i in range(passages)
        ]
    )
    common = ["cement", "sand", "delivery", "price"]
    worst = Knowledge.of(
        [Passage("d.md", "", " ".join(common * 15) + f" item{i}") for i in range(passages)]
    )
    out = []
    for knowledge, ask in (
        (zipf, lambda q: " ".join(rng.choices(vocab, weights, k=6))),
        (worst, lambda q: f"how much is cement sand delivery price for item{q}?"),
    ):
        times = []
        for q in range(questions):
            question = ask(q)
            started = time.perf_counter()
            knowledge.search(question, 4)
            times.append(time.perf_counter() - started)
        out.append(statistics.median(times) * 1e6)
    return out[0], out[1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", type=int, default=50, help="contacts that need no model")
    parser.add_argument("--rounds", type=int, default=40, help="messages each of them sends")
    parser.add_argument("--slow", type=int, default=200, help="contacts asking the slow model")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds the slow model takes")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "bench.yaml").write_text(FLOW.lstrip("\n"))
        alone, beside = [], []
        for i in range(args.repeat):  # alternately, so drift of the machine hits both
            alone.append(
                await throughput(folder, args.fast, args.rounds, 0, delay=args.delay, tag=f"a{i}")
            )
            beside.append(
                await throughput(
                    folder, args.fast, args.rounds, args.slow, delay=args.delay, tag=f"b{i}"
                )
            )
        a, b = statistics.median(alone), statistics.median(beside)
        print(
            f"messages needing no model, {args.fast} contacts x {args.rounds}, median of {args.repeat}:"
        )
        print(
            f"  alone:                                   {a:8.0f} msg/s  (runs: {', '.join(f'{x:.0f}' for x in alone)})"
        )
        print(
            f"  with {args.slow} contacts on a {args.delay:.0f} s model: {b:8.0f} msg/s  (runs: {', '.join(f'{x:.0f}' for x in beside)})"
        )
        print(f"  ratio: {b / a:.2f}")
        plain, model, prompt = await overhead(folder, 200)
        print("one contact, 200 messages each, median from the message to its replies:")
        print(
            f"  no model: {plain:.1f} ms; a question to a model that answers at once: {model:.1f} ms"
        )
        print(
            f"  LLM path overhead: {model - plain:.1f} ms; prompt {prompt} characters (about {prompt // 4} tokens)"
        )
    for n in (1_000, 10_000):
        typical, worst = retrieval(n, 200)
        print(
            f"BM25 over {n:,} passages, median a question: {typical:.0f} us (Zipf vocabulary),"
            f" {worst:.0f} us (every passage holds every word asked)"
        )


if __name__ == "__main__":
    asyncio.run(main())
