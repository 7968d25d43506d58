"""engine.llm.model.ChatModel on the official `openai` client: Chat Completions and Embeddings,
which every OpenAI-compatible server speaks (OpenAI, OpenRouter, vLLM, Ollama, LiteLLM).

The client's own retries are off (`max_retries=0`): the engine decides what happens after a
failure (the next model, within the turn's time). Every failure becomes ModelFailed with a kind;
the error texts kept are the server's status and message, never the request (it carries the key).
"""

from __future__ import annotations

from typing import Any

import openai
from openai import AsyncOpenAI

from engine.llm.model import Chat, Completion, ModelFailed


class OpenAiChat:
    def __init__(self, api_key: str, base_url: str | None = None) -> None:
        self._client = AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)

    async def complete(
        self,
        model: str,
        messages: Chat,
        *,
        schema: dict[str, Any] | None,
        max_tokens: int,
        limit: float,
    ) -> Completion:
        extra: dict[str, Any] = {}
        if schema is not None:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": True},
            }
        try:
            response = await self._client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=0,
                timeout=max(limit, 0.1),
                **extra,
            )
        except Exception as e:
            raise _failure(e) from None
        try:
            text = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError, KeyError):
            raise ModelFailed("bad_body", "not a chat completion") from None
        if not isinstance(text, str):
            raise ModelFailed("bad_body", "a completion without text")
        usage = getattr(response, "usage", None)
        return Completion(
            text,
            int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0),
        )

    async def embed(self, model: str, texts: list[str], *, limit: float) -> list[list[float]]:
        try:
            response = await self._client.embeddings.create(
                model=model, input=texts, timeout=max(limit, 0.1)
            )
            vectors = [list(map(float, d.embedding)) for d in response.data]
        except ModelFailed:
            raise
        except Exception as e:
            raise _failure(e) from None
        if len(vectors) != len(texts):
            raise ModelFailed("bad_body", "a vector count that does not match")
        return vectors

    async def close(self) -> None:
        await self._client.close()


def _failure(error: Exception) -> ModelFailed:
    if isinstance(error, openai.APITimeoutError):
        return ModelFailed("timeout", "the server did not answer in time")
    if isinstance(error, openai.APIConnectionError):
        return ModelFailed("connection", "the server could not be reached")
    if isinstance(error, openai.APIStatusError):
        kind = "rate_limited" if error.status_code == 429 else "status"
        message = ""
        body = error.body
        if isinstance(body, dict):
            inner = body.get("error", body)
            message = str(inner.get("message", "")) if isinstance(inner, dict) else ""
        return ModelFailed(
            kind, f"HTTP {error.status_code} {message}"[:300], _retry_after(error.response)
        )
    if isinstance(error, openai.APIResponseValidationError | ValueError | TypeError):
        return ModelFailed("bad_body", "the body is not a completion")
    return ModelFailed("error", type(error).__name__)


def _retry_after(response: Any) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare from these APIs and left out)."""
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except (AttributeError, TypeError, ValueError):
        return None
    return seconds if 0 < seconds < 86400 else None
