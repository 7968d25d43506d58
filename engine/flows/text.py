"""Text matching and templates for flows.

Customers type in any case, with stray spaces and with or without accents, so every comparison
runs on `normalize`d text: accents removed, case folded, whitespace collapsed. Templates fill
`{name}`, `{text}` and slots, with an optional default (`{name|there}`), and the value of an
expression (`{= money(total)}`); `{{` and `}}` are literal braces.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .values import Value, to_text

# {{ and }} (literal braces), {= expression} (which may hold records, two deep: {= merge(r,
# {'a': {'b': 1}})}), {slot} and {slot|default}.
_NESTED = r"(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*"
PLACEHOLDER = re.compile(
    r"\{\{|\}\}|\{=(?P<expr>" + _NESTED + r")\}"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\|(?P<default>[^{}]*))?\}"
)
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
    return [m["name"] for m in PLACEHOLDER.finditer(template) if m["name"]]


def expressions(template: str) -> list[str]:
    """The sources of the template's {= ...} expressions."""
    return [m["expr"] for m in PLACEHOLDER.finditer(template) if m["expr"] is not None]


def stray_brace(template: str) -> bool:
    """True when a { or } is neither a placeholder nor escaped as {{ or }}."""
    rest = PLACEHOLDER.sub("", template)
    return "{" in rest or "}" in rest


def static_length(template: str) -> int:
    """Length of the template with its placeholders removed (what is known before run time)."""
    return len(
        PLACEHOLDER.sub(lambda m: "" if m["name"] or m["expr"] is not None else "{", template)
    )


def render(
    template: str,
    values: Mapping[str, Value],
    compute: Callable[[str], Value] | None = None,
) -> str:
    """Fill a template: {slot} and {slot|default} from `values`, {= expr} through `compute`."""
    if "{" not in template and "}" not in template:
        return template

    def fill(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        if m["expr"] is not None:
            return to_text(compute(m["expr"])) if compute is not None else ""
        value = values.get(m["name"])
        if value is None or value == "":
            return m["default"] or ""
        return to_text(value)

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
