"""The business's documents, in passages, ranked for a question with BM25.

`KNOWLEDGE_DIR` holds Markdown and text files. At load each is cut into passages: by heading,
then by paragraph, packed up to `chunk_chars` characters (a longer paragraph is cut at a
sentence or word end), each passage keeping the headings above it, so "Delivery > Charges"
ranks and reads with its text. Only the best `k` passages go into a prompt, never a whole
document.

BM25 (Okapi, k1 1.2, b 0.75) is a few dozen lines over an inverted index: it needs no service
and ranks the same whatever the store backend is; a question costs about 1 ms over 1,000
passages and 10 to 12 ms over 10,000 (bench/llm.py), on the event loop. Words are compared as
`engine.flows.text.normalize` sees them (case and accents folded), with a plural's final s
dropped and the commonest English words left out.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..flows.text import normalize

log = logging.getLogger(__name__)

SUFFIXES = (".md", ".markdown", ".txt")
MAX_FILE = 2 * 1024 * 1024  # bytes: a bigger file is left out, logged
MAX_FILES = 2000
K1, B = 1.2, 0.75
_WORD = re.compile(r"\w+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_STOP = (
    "a an and are as at be by can do does for from how i if in is it its me my of on or our so"
    " that the their there this to was we what when where which who why will with you your"
    " please tell about have has any should could would shall may might must am been being"
    " hi hello thanks thank just also"
)
STOPWORDS = frozenset(_STOP.split())


def terms(text: str) -> list[str]:
    out = []
    for word in _WORD.findall(normalize(text)):
        if word in STOPWORDS:
            continue
        plural = len(word) > 3 and word.endswith("s") and not word.endswith("ss")
        out.append(word[:-1] if plural else word)
    return out


@dataclass(frozen=True, slots=True)
class Passage:
    source: str  # the file, relative to the folder
    heading: str  # the headings above it, "Delivery > Charges"
    text: str

    def shown(self) -> str:
        return f"{self.heading}\n{self.text}" if self.heading else self.text


@dataclass(slots=True)
class Knowledge:
    passages: list[Passage] = field(default_factory=list)
    _postings: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    _lengths: list[int] = field(default_factory=list)
    _average: float = 0.0
    _norms: list[float] = field(default_factory=list)  # BM25's length norm of each passage
    vectors: list[list[float]] | None = None  # embeddings, one per passage, when computed

    @classmethod
    def of(cls, passages: list[Passage]) -> Knowledge:
        k = cls(passages)
        for i, p in enumerate(passages):
            counts = Counter(terms(p.shown()))
            k._lengths.append(sum(counts.values()))
            for term, n in counts.items():
                k._postings.setdefault(term, []).append((i, n))
        k._average = (sum(k._lengths) / len(k._lengths)) if k._lengths else 0.0
        k._norms = [K1 * (1 - B + B * n / (k._average or 1.0)) for n in k._lengths]
        return k

    @classmethod
    def load(cls, folder: Path, chunk_chars: int = 800) -> Knowledge:
        """Every document of `folder` (and its sub-folders) in passages; a missing folder is
        an empty knowledge (flows answer from it only when it holds something)."""
        if not folder.is_dir():
            return cls.of([])
        passages: list[Passage] = []
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES)
        for path in files[:MAX_FILES]:
            if not path.is_file() or path.is_symlink():
                continue
            if path.stat().st_size > MAX_FILE:
                log.warning("knowledge: %s is over %d bytes; left out", path, MAX_FILE)
                continue
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError as e:
                log.warning("knowledge: %s cannot be read (%s); left out", path, e)
                continue
            name = str(path.relative_to(folder))
            passages.extend(chunk(name, text, chunk_chars))
        if len(files) > MAX_FILES:
            log.warning("knowledge: %d files; only the first %d are read", len(files), MAX_FILES)
        return cls.of(passages)

    def __len__(self) -> int:
        return len(self.passages)

    def scores(self, question: str) -> dict[int, float]:
        n = len(self.passages)
        out: dict[int, float] = {}
        for term in set(terms(question)):
            postings = self._postings.get(term)
            if not postings:
                continue
            idf = math.log(1 + (n - len(postings) + 0.5) / (len(postings) + 0.5))
            norms, lift = self._norms, idf * (K1 + 1)
            for i, tf in postings:
                out[i] = out.get(i, 0.0) + lift * tf / (tf + norms[i])
        return out

    def search(self, question: str, k: int) -> list[Passage]:
        """The `k` passages that rank best for `question` (those sharing a word with it)."""
        ranked = sorted(self.scores(question).items(), key=lambda item: (-item[1], item[0]))
        return [self.passages[i] for i, _score in ranked[:k]]


def chunk(source: str, text: str, limit: int) -> list[Passage]:
    """`text` in passages of at most `limit` characters, each under its headings."""
    out: list[Passage] = []
    path: list[str] = []
    paragraph: list[str] = []
    pending: list[str] = []
    size = 0

    def flush_passage() -> None:
        nonlocal pending, size
        if pending:
            out.append(Passage(source, " > ".join(path), "\n\n".join(pending)))
        pending, size = [], 0

    def end_paragraph() -> None:
        nonlocal paragraph, size
        body = "\n".join(paragraph).strip()
        paragraph = []
        if not body:
            return
        for piece in _cut(body, limit):
            if size and size + len(piece) + 2 > limit:
                flush_passage()
            pending.append(piece)
            size += len(piece) + 2

    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            end_paragraph()
            flush_passage()
            level = len(heading.group(1))
            del path[level - 1 :]
            path.extend([""] * (level - 1 - len(path)))
            path.append(heading.group(2))
            path[:] = [p for p in path if p]
        elif not line.strip():
            end_paragraph()
        else:
            paragraph.append(line)
    end_paragraph()
    flush_passage()
    return out


def _cut(text: str, limit: int) -> list[str]:
    """A paragraph longer than `limit` in pieces ending at a sentence, else a word."""
    pieces = []
    while len(text) > limit:
        window = text[:limit]
        cut = max(window.rfind(". "), window.rfind("? "), window.rfind("! "))
        if cut < limit // 2:
            cut = window.rfind(" ")
        if cut < limit // 2:
            cut = limit - 1
        pieces.append(text[: cut + 1].strip())
        text = text[cut + 1 :].strip()
    if text:
        pieces.append(text)
    return pieces
