"""Text matching and templates for flows.

Customers type in any case, with stray spaces and with or without accents, so every comparison
runs on `normalize`d text: accents removed, case folded, whitespace collapsed. Templates fill
`{name}`, `{text}` and slots, with an optional default: `{name|there}`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)(?:\|([^{}]*))?\}")
WORD = re.compile(r"\w+")
BUILTIN_VALUES = frozenset({"name", "text", "phone"})


def normalize(text: str) -> str:
    """Accents removed, case folded, whitespace collapsed, punctuation trimmed at both ends:
    '  Olá,  MUNDO! ' -> 'ola, mundo'."""
    if not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _trim(" ".join(text.casefold().split()))


def _trim(text: str) -> str:
    """Drop what is not a letter or digit at both ends. (A regex like `[^a-z0-9]+$` does this in
    time quadratic in a run of punctuation inside the text: a customer's 20,000 '!' stalled
    the whole process for seconds.)"""
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end]


def words(text: str) -> str:
    """Normalized words joined by single spaces and padded, for whole-phrase search."""
    return " " + " ".join(WORD.findall(normalize(text))) + " "


@dataclass(frozen=True, slots=True)
class Keywords:
    """Matches when any phrase appears as whole words: 'talk to agent' has 'agent'."""

    phrases: tuple[str, ...]  # each already in `words` form

    @classmethod
    def of(cls, items: Sequence[str]) -> Keywords:
        return cls(tuple(w for w in (words(i) for i in items) if w.strip()))

    def count(self, padded_words: str) -> int:
        return sum(1 for p in self.phrases if p in padded_words)


# --- templates -------------------------------------------------------------------------------


def placeholders(template: str) -> list[str]:
    return [m.group(1) for m in PLACEHOLDER.finditer(template) if m.group(1)]


def stray_brace(template: str) -> bool:
    """True when a { or } is neither a placeholder nor escaped as {{ or }}."""
    rest = PLACEHOLDER.sub("", template)
    return "{" in rest or "}" in rest


def static_length(template: str) -> int:
    """Length of the template with its placeholders removed (what is known before run time)."""
    return len(PLACEHOLDER.sub(lambda m: "" if m.group(1) else "{", template))


def render(template: str, values: Mapping[str, str | None]) -> str:
    if "{" not in template and "}" not in template:
        return template

    def fill(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        value = values.get(m.group(1))
        if value is None or value == "":
            return m.group(2) or ""
        return value

    return PLACEHOLDER.sub(fill, template)


# --- FAQ -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaqEntry:
    question: str
    keywords: Keywords
    answer: str


@dataclass(frozen=True, slots=True)
class Faq:
    entries: tuple[FaqEntry, ...]

    def answer(self, text: str) -> FaqEntry | None:
        """The entry whose keywords the text hits most often; ties go to the earlier entry."""
        padded = words(text)
        best, best_score = None, 0
        for entry in self.entries:
            score = entry.keywords.count(padded)
            if score > best_score:
                best, best_score = entry, score
        return best
