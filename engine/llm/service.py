"""Asking models: the primary first, then each fallback, all within one turn's time.

    ask(chat, schema, check) -> for each model of LLM_MODEL, LLM_FALLBACK_MODELS:
        skipped while its circuit is open (it kept failing: rest, then one trial call)
        one attempt, bounded by half of what is left of LLM_TIMEOUT_S while other models
        remain (all of it for the last), waiting for a free slot of LLM_CONCURRENCY included,
        raced on the injected clock
        a timeout, a connection error, any non-2xx answer (429 too), a body that is not a
        completion, an answer that breaks the requested shape: the next model
    -> the value and the model that gave it; none: ActionFailed("unavailable"), and the
       flow takes its non-LLM path

The three built-in actions the flow language's `answer:`, `understand:` and `extract:` steps
call (`llm.answer`, `llm.classify`, `llm.extract`) are this class's methods; they run as actions
do, outside the state machine and the contact's run slot (engine.calls).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from ..actions import ActionContext, ActionFailed
from ..logs import mask
from ..metrics import Metrics
from ..ports import Clock, MessageRow
from .knowledge import Knowledge, Passage
from .model import Chat, ChatModel, Completion, ModelFailed
from .prompts import (
    ANSWER_SCHEMA,
    MAX_QUESTION,
    Redactor,
    Turn,
    answer_prompt,
    classify_prompt,
    classify_schema,
    data,
    extract_prompt,
    extract_schema,
    read_answer,
    read_choice,
    read_fields,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
History = Callable[[str, int], Awaitable[list[MessageRow]]]
MILLION = Decimal(1_000_000)
EMBED_BATCH = 64
EMBED_TIMEOUT = 30.0  # seconds for one batch of passages at load
EMBED_RETRY = 60.0  # seconds before embedding the passages is tried again after a failure


@dataclass(frozen=True, slots=True)
class LlmConfig:
    models: tuple[str, ...]  # the primary, then the fallbacks in order
    timeout: float = 10.0  # the whole turn: what the customer waits for
    concurrency: int = 16  # calls in flight at once, across all contacts
    max_tokens: int = 400
    history: int = 6  # earlier messages of the conversation that go with each call
    top_k: int = 4  # passages that go into an answer's prompt
    embedding_model: str | None = None
    # USD per million tokens, (prompt, completion), by model; a model not listed costs 0.
    prices: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    breaker_failures: int = 3  # failures in a row that open a model's circuit
    breaker_rest: float = 30.0  # seconds an open circuit skips the model


class Breaker:
    """Per model: after `failures` failures in a row the model is skipped for `rest` seconds;
    then one call is let through, and its outcome closes the circuit or opens it again."""

    def __init__(self, failures: int, rest: float) -> None:
        self._limit = failures
        self._rest = rest
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def allows(self, model: str, now: float) -> bool:
        until = self._open_until.get(model)
        if until is None or now >= until:
            if until is not None:  # half open: one trial; a failure opens it again at once
                self._open_until.pop(model, None)
                self._failures[model] = self._limit - 1
            return True
        return False

    def failed(self, model: str, now: float) -> bool:
        """Count a failure; True when it opens the circuit."""
        n = self._failures.get(model, 0) + 1
        self._failures[model] = n
        if n >= self._limit:
            self._open_until[model] = now + self._rest
            return True
        return False

    def resting(self, model: str, now: float) -> bool:
        """True while the model's circuit is open (it will be skipped)."""
        until = self._open_until.get(model)
        return until is not None and now < until

    def hold(self, model: str, now: float, seconds: float) -> None:
        """The model's server asked to be left alone (429 with Retry-After): skip it that long
        (at most 5 minutes), then one trial call."""
        until = now + min(seconds, 300.0)
        self._open_until[model] = max(self._open_until.get(model, 0.0), until)

    def succeeded(self, model: str) -> None:
        self._failures.pop(model, None)
        self._open_until.pop(model, None)


class Llm:
    def __init__(
        self,
        model: ChatModel,
        config: LlmConfig,
        *,
        clock: Clock,
        metrics: Metrics,
        knowledge: Knowledge | None = None,
        redact: Redactor | None = None,
        history: History | None = None,
    ) -> None:
        if not config.models:
            raise ValueError("an Llm needs at least one model")
        self._model = model
        self.config = config
        self._clock = clock
        self._metrics = metrics
        self.knowledge = knowledge or Knowledge.of([])
        self.redact = redact or Redactor()
        self.history = history  # the store's transcript, set once the store is open
        self.breaker = Breaker(config.breaker_failures, config.breaker_rest)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._embedding: asyncio.Task[None] | None = None
        self._embed_after = 0.0

    def use(self, knowledge: Knowledge) -> None:
        """Documents read again (a reload): answers from now on rank these."""
        self.knowledge = knowledge
        if self._embedding is not None:
            self._embedding.cancel()
            self._embedding = None
        self._embed_after = 0.0

    async def close(self) -> None:
        if self._embedding is not None:
            self._embedding.cancel()
            await asyncio.gather(self._embedding, return_exceptions=True)
        await self._model.close()

    # --- the built-in actions ----------------------------------------------------------------

    def actions(self) -> dict[str, Callable[..., Any]]:
        """The built-in actions, by name, for load_flows; each bounds its own time."""

        async def answer(ctx: ActionContext, question: str, format: str = "json") -> Any:
            return await self.answer(ctx, question, format)

        async def classify(ctx: ActionContext, text: str, choices: dict[str, str]) -> Any:
            return await self.classify(ctx, text, choices)

        async def extract(
            ctx: ActionContext, text: str, fields: dict[str, str], many: bool = False
        ) -> Any:
            return await self.extract(ctx, text, fields, many)

        out: dict[str, Callable[..., Any]] = {
            "llm.answer": answer,
            "llm.classify": classify,
            "llm.extract": extract,
        }
        for fn in out.values():
            fn.__within__ = self.config.timeout + 2.0  # type: ignore[attr-defined]
        return out

    async def answer(
        self, ctx: ActionContext, question: str, format: str = "json"
    ) -> dict[str, Any]:
        """The question answered from the documents: {answer, found, model}. Nothing in the
        documents shares a word with it: not found, and no model is asked."""
        deadline = self._deadline(ctx)
        passages = await self._retrieve(question, deadline)
        if not passages:
            log.info("llm: no passage matches a question of %s; not found", mask(ctx.contact))
            return {"answer": "", "found": False, "model": None}
        json_answer = format != "text"
        chat = answer_prompt(
            "the business",
            question,
            passages,
            await self._turns(ctx.contact, question),
            self.redact,
            json_answer=json_answer,
        )
        (answer, found), model = await self.ask(
            chat,
            ANSWER_SCHEMA if json_answer else None,
            lambda text: read_answer(text, json_answer=json_answer),
            deadline,
            "answer",
        )
        return {"answer": answer, "found": found, "model": model}

    async def classify(
        self, ctx: ActionContext, text: str, choices: dict[str, str]
    ) -> dict[str, Any]:
        """The one of `choices` (id -> what it means) that the customer's text means, or none."""
        deadline = self._deadline(ctx)
        ids = list(choices)
        chat = classify_prompt(choices, text, await self._turns(ctx.contact, text), self.redact)
        choice, model = await self.ask(
            chat, classify_schema(ids), lambda t: read_choice(t, ids), deadline, "classify"
        )
        return {"choice": choice, "model": model}

    async def extract(
        self, ctx: ActionContext, text: str, fields: dict[str, str], many: bool = False
    ) -> dict[str, Any]:
        """The declared fields (name -> type) filled from the customer's text."""
        deadline = self._deadline(ctx)
        chat = extract_prompt(fields, many, text, await self._turns(ctx.contact, text), self.redact)
        value, model = await self.ask(
            chat,
            extract_schema(fields, many),
            lambda t: read_fields(t, fields, many),
            deadline,
            "extract",
        )
        return {"value": value, "model": model}

    # --- the fallback chain ------------------------------------------------------------------

    def _deadline(self, ctx: ActionContext) -> float:
        return min(ctx.deadline, self._clock.now() + self.config.timeout)

    async def ask(
        self,
        chat: Chat,
        schema: dict[str, Any] | None,
        check: Callable[[str], T],
        deadline: float,
        what: str = "ask",
    ) -> tuple[T, str]:
        """The first model's answer that passes `check`, and that model's name."""
        tried: list[str] = []
        models = self.config.models
        for n, model in enumerate(models):
            now = self._clock.now()
            left = deadline - now
            if left <= 0:
                break
            # Half of what is left while other models may still be tried (a model that hangs
            # must leave the next one time), all of it for the last.
            later = any(not self.breaker.resting(m, now) for m in models[n + 1 :])
            limit = left / 2 if later else left
            if not self.breaker.allows(model, now):
                self._metrics.llm_requests.inc(model, "skipped")
                continue
            if tried:
                self._metrics.llm_fallbacks.inc()
            tried.append(model)
            started = time.perf_counter()
            try:
                completion = await self._race(self._complete(model, chat, schema, limit), limit)
                value = check(completion.text)
            except ModelFailed as e:
                self._failed(model, e, what)
                continue
            took = time.perf_counter() - started
            self.breaker.succeeded(model)
            self._account(model, completion, took, what)
            return value, model
        log.warning(
            "llm %s: no model answered (tried %s within %.1fs); the flow's other path answers",
            what,
            ", ".join(tried) or "none: every circuit is open",
            self.config.timeout,
        )
        raise ActionFailed("no model answered", "unavailable")

    async def _complete(
        self, model: str, chat: Chat, schema: dict[str, Any] | None, left: float
    ) -> Completion:
        async with self._slots:
            return await self._model.complete(
                model, chat, schema=schema, max_tokens=self.config.max_tokens, limit=left
            )

    async def _race(self, work: Awaitable[T], seconds: float) -> T:
        """`work`, unless `seconds` pass first on the injected clock (then ModelFailed)."""
        task = asyncio.ensure_future(work)
        limit = asyncio.ensure_future(self._clock.sleep(seconds))
        try:
            await asyncio.wait({task, limit}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            limit.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ModelFailed("timeout", f"no answer within {seconds:.1f}s")
        error = task.exception()
        if error is not None and not isinstance(error, ModelFailed):
            raise ModelFailed("error", type(error).__name__) from error
        return task.result()

    def _failed(self, model: str, error: ModelFailed, what: str) -> None:
        self._metrics.llm_requests.inc(model, error.kind)
        now = self._clock.now()
        opened = self.breaker.failed(model, now)
        if error.retry_after is not None:
            self.breaker.hold(model, now, error.retry_after)
        log.warning(
            "llm %s: %s failed (%s)%s%s",
            what,
            model,
            error.kind,
            f": {self.redact(error.detail)[:200]}" if error.detail else "",
            f"; skipped for {self.config.breaker_rest:.0f}s" if opened else "",
        )

    def _account(self, model: str, c: Completion, took: float, what: str) -> None:
        m = self._metrics
        m.llm_requests.inc(model, "ok")
        m.llm_latency.observe(took)
        m.llm_tokens.inc(model, "prompt", by=c.prompt_tokens)
        m.llm_tokens.inc(model, "completion", by=c.completion_tokens)
        cost = self.cost(model, c.prompt_tokens, c.completion_tokens)
        if cost:
            m.llm_cost.inc(model, by=float(cost))
        log.info(
            "llm %s by %s: %d prompt + %d completion tokens, $%s, %.2fs",
            what,
            model,
            c.prompt_tokens,
            c.completion_tokens,
            f"{cost:.6f}",
            took,
        )

    def cost(self, model: str, prompt: int, completion: int) -> Decimal:
        price = self.config.prices.get(model)
        if price is None:
            return Decimal(0)
        return (price[0] * prompt + price[1] * completion) / MILLION

    # --- context -----------------------------------------------------------------------------

    async def _turns(self, contact: str, current: str) -> list[Turn]:
        """The conversation's last few messages before the current one."""
        if self.history is None or self.config.history <= 0:
            return []
        try:
            rows = await self.history(contact, self.config.history + 1)
        except Exception as e:  # a store hiccup costs the context, not the answer
            log.warning("llm: the conversation's history could not be read (%r)", e)
            return []
        turns = [Turn(r.direction == "in", r.text) for r in rows if r.text]
        if turns and turns[-1].customer and turns[-1].text.strip() == current.strip():
            turns.pop()
        return turns[-self.config.history :]

    async def _retrieve(self, question: str, deadline: float) -> list[Passage]:
        k = self.config.top_k
        knowledge = self.knowledge
        if not len(knowledge):
            return []
        if self.config.embedding_model is None:
            return knowledge.search(question, k)
        self._embed_passages(knowledge)
        vectors = knowledge.vectors
        if vectors is None:
            return knowledge.search(question, k)
        left = deadline - self._clock.now()
        try:
            query = await self._race(
                self._model.embed(
                    self.config.embedding_model,
                    [data(question, self.redact, MAX_QUESTION)],
                    limit=left / 3,
                ),
                left / 3,
            )
        except ModelFailed as e:
            log.warning("llm: the question could not be embedded (%s); BM25 alone ranks", e.kind)
            return knowledge.search(question, k)
        return fused(knowledge, question, query[0], vectors, k)

    def _embed_passages(self, knowledge: Knowledge) -> None:
        """Embed the passages once, in the background; until then BM25 ranks alone."""
        busy = self._embedding is not None and not self._embedding.done()
        if knowledge.vectors is not None or busy or self._clock.now() < self._embed_after:
            return
        self._embedding = asyncio.create_task(self._embed_all(knowledge), name="llm:embed")

    async def _embed_all(self, knowledge: Knowledge) -> None:
        assert self.config.embedding_model is not None
        texts = [self.redact.secrets(p.shown()) for p in knowledge.passages]
        out: list[list[float]] = []
        try:
            for i in range(0, len(texts), EMBED_BATCH):
                batch = texts[i : i + EMBED_BATCH]
                out += await self._race(
                    self._model.embed(self.config.embedding_model, batch, limit=EMBED_TIMEOUT),
                    EMBED_TIMEOUT,
                )
        except ModelFailed as e:
            self._embed_after = self._clock.now() + EMBED_RETRY
            log.warning("llm: the documents could not be embedded (%s); BM25 alone ranks", e.kind)
            return
        if len(out) == len(texts):
            knowledge.vectors = out
            log.info("llm: %d passages embedded with %s", len(out), self.config.embedding_model)


def fused(
    knowledge: Knowledge, question: str, query: list[float], vectors: Sequence[list[float]], k: int
) -> list[Passage]:
    """BM25's ranking and the embeddings' ranking, fused by reciprocal rank (k=60)."""
    bm25 = sorted(knowledge.scores(question).items(), key=lambda item: -item[1])
    near = sorted(
        ((i, _cosine(query, v)) for i, v in enumerate(vectors)), key=lambda item: -item[1]
    )
    score: dict[int, float] = {}
    for ranking in (bm25, near[: max(k * 3, 10)]):
        for rank, (i, _s) in enumerate(ranking):
            score[i] = score.get(i, 0.0) + 1.0 / (60 + rank)
    best = sorted(score.items(), key=lambda item: (-item[1], item[0]))[:k]
    return [knowledge.passages[i] for i, _s in best]


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
