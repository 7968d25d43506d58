"""The port to a language model: one chat completion, or embeddings, from one named model.

An adapter (adapters/llm/openai_chat.py, on the official `openai` client) turns every way a call
can fail into `ModelFailed` with a kind, and makes no retries of its own: which model is tried
next, and how long it may take, is the engine's decision (engine.llm.service).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

Chat = list[dict[str, str]]  # [{"role": "system" | "user" | "assistant", "content": ...}]


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ModelFailed(Exception):
    """A call that gave no usable answer. `kind`: timeout, connection, rate_limited (429),
    status (another non-2xx), bad_body (not the JSON of a completion), bad_answer (an answer that
    breaks the requested schema)."""

    def __init__(self, kind: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after  # seconds the server asked to be left alone (429)


class ChatModel(Protocol):
    async def complete(
        self,
        model: str,
        messages: Chat,
        *,
        schema: dict[str, Any] | None,
        max_tokens: int,
        limit: float,
    ) -> Completion:
        """One completion; `schema`: a JSON schema the answer must follow (structured output).
        Raises ModelFailed."""
        ...

    async def embed(self, model: str, texts: list[str], *, limit: float) -> list[list[float]]:
        """One vector per text. Raises ModelFailed."""
        ...

    async def close(self) -> None: ...
