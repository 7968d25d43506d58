"""Reading an order written in free text against a catalogue.

    "<name> x 100, <alias> 20 <unit>s"   two lines: 100 of one item, 20 of another
    "100 <unit>s <name>"                 the quantity and a unit word before the name
    "<nmae> 100"                         a typo: matched fuzzily (rapidfuzz)
    "2 <name with 12mm in it>"           digits inside a name ("12mm") stay part of it
    "remove <name>"                      takes an item out of the cart

Every name, alias and unit word comes from the catalogue: nothing here knows what a business
sells. A line is split from the others at new lines, commas (not inside "1,200"), semicolons and
"and" between two quantities; the quantity is a number on its own ("x 100", "100x", "100"), a
number word ("two", "a dozen") or, with none, 1. When several numbers could be the quantity,
the reading whose rest best names an item wins. A line whose best items score within
`CLOSE` points of each other is ambiguous: the customer is asked which one.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import regex
from rapidfuzz import fuzz, process

from .catalogue import Catalogue, Item, normal

GOOD = 75.0  # the least score that names an item
CLOSE = 4.0  # items this close to the best score are candidates too: the line is ambiguous
MAX_LINES = 50
MAX_LINE = 200  # characters of one line that are read
MAX_QUANTITY = Decimal(1_000_000)

# A comma between two digits is inside a number ("1,200", "1,5"), not between lines.
_SPLIT = regex.compile(r"[\n;]+|,(?!\d)|(?<!\d),")
_AND = regex.compile(r"\s+(?:and|&|\+)\s+", regex.IGNORECASE)
_MARKER = regex.compile(r"^\s*(?:[-*•·]+|\d{1,2}[.)])\s+")
_TIMES = regex.compile(
    r"(?<![\p{L}\p{N}])[x×*]\s*(\d[\d,]*(?:\.\d+)?)(?![\p{L}\p{N}])|(?<![\p{L}\p{N}.,])(\d[\d,]*(?:\.\d+)?)\s*[x×*](?![\p{L}\p{N}])",
    regex.IGNORECASE,
)
_NUMBER = regex.compile(r"^\d{1,3}(?:,\d{3})+(?:\.\d+)?$|^\d+(?:[.,]\d+)?$")
_GLUED = regex.compile(r"^(\d+(?:[.,]\d+)?)(\p{L}+)$")  # a unit word stuck on: "2kg"
# What cannot be a quantity however it is read: a minus sign, an exponent, a fraction.
_UNREADABLE = regex.compile(
    r"(?<![\p{L}\p{N}])[-−]\d|\d[.,]?\d*e[-+]?\d|\d\s*/\s*\d|[\u00bc-\u00be\u2150-\u215e]"
    r"|(?<![\p{L}\p{N}])(?:nan|inf|infinity)(?![\p{L}\p{N}])",
    regex.IGNORECASE,
)
_REMOVE = regex.compile(
    r"^\s*(?:remove|delete|drop|no more|no|without|cancel)\b\s*", regex.IGNORECASE
)
_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12,
    "fifteen": 15, "twenty": 20, "fifty": 50, "hundred": 100,
}  # fmt: skip
_FILLER = frozenset(
    {
        "of", "please", "pls", "plz", "i", "want", "need", "would", "like", "send", "me",
        "give", "us", "the", "some", "more", "for", "also", "kindly", "order", "add", "nos",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Line:
    """One line of what the customer wrote, read.

    kind: item (sku and quantity known), remove (sku known), ambiguous (candidates: the skus
    it may name, best first), unknown (nothing in the catalogue is close), or bad (a quantity
    that cannot be ordered: zero is a remove, past MAX_QUANTITY or negative is bad)."""

    kind: str
    text: str  # the line as written (trimmed), to name it back
    sku: str = ""
    quantity: Decimal = Decimal(0)
    unit: str = ""  # the unit word written, if any
    candidates: tuple[str, ...] = ()


def split_lines(text: str, most: int = MAX_LINES) -> list[str]:
    """The order's lines: at new lines, commas, semicolons, and "and" between two quantities."""
    out: list[str] = []
    for part in _SPLIT.split(text):
        halves = _AND.split(part)
        if len(halves) > 1 and all(_has_quantity(p) for p in halves):
            out.extend(halves)
        else:
            out.append(part)
    lines = [_MARKER.sub("", p).strip()[:MAX_LINE] for p in out]
    return [p for p in lines if normal(p)][:most]


def _has_quantity(text: str) -> bool:
    return any(_NUMBER.match(t) or t in _WORDS for t in _tokens(text))


def _tokens(text: str) -> list[str]:
    return [t for t in regex.split(r"[^\p{L}\p{N}.,]+", text.casefold()) if t.strip(".,")]


def read_order(text: str, catalogue: Catalogue) -> list[Line]:
    """Every line of `text`, read against `catalogue` (past MAX_LINES: one line "skipped")."""
    lines = split_lines(text, MAX_LINES + 1)
    out = [read_line(line, catalogue) for line in lines[:MAX_LINES]]
    if len(lines) > MAX_LINES:
        out.append(Line("skipped", f"lines after the {MAX_LINES}th"))
    return out


def read_line(text: str, catalogue: Catalogue) -> Line:
    removing = _REMOVE.match(text)
    body = text[removing.end() :] if removing else text
    if not removing and _UNREADABLE.search(body):  # never read as 1: named back instead
        return Line("bad", " ".join(text.split())[:60])
    body = _unglue(body, catalogue)
    marked = _TIMES.search(body)
    readings: list[tuple[float, Decimal | None, str, str]] = []  # (score, qty, name, unit)
    if marked:
        number = marked.group(1) or marked.group(2)
        rest = body[: marked.start()] + " " + body[marked.end() :]
        readings.append(_reading(rest, _quantity(number), catalogue))
    else:
        tokens = _tokens(body)
        for n, token in enumerate(tokens):
            quantity = _quantity(token) if _NUMBER.match(token) else None
            if quantity is None and _NUMBER.match(token):  # "1.2345": more than 3 decimals
                return Line("bad", " ".join(text.split())[:60])
            if quantity is None and token in _WORDS and not removing:
                quantity = Decimal(_WORDS[token])
            if quantity is not None:
                readings.append(
                    _reading(" ".join(tokens[:n] + tokens[n + 1 :]), quantity, catalogue)
                )
        readings.append(_reading(" ".join(tokens), None, catalogue))
    # The best name wins; on a tie, the reading with a quantity (the first written).
    _score_of, quantity, _name, unit = max(readings, key=lambda r: (r[0], r[1] is not None))
    trimmed = " ".join(text.split())[:60]
    candidates = _candidates(_name, unit, catalogue)
    if not candidates:
        return Line("unknown", trimmed)
    if len(candidates) > 1:
        return Line(
            "ambiguous",
            trimmed,
            quantity=quantity or Decimal(1),
            unit=unit,
            candidates=tuple(c.sku for c in candidates),
        )
    sku = candidates[0].sku
    if removing or quantity == 0:
        return Line("remove", trimmed, sku)
    quantity = Decimal(1) if quantity is None else quantity
    if not 0 < quantity <= MAX_QUANTITY:
        return Line("bad", trimmed, sku, quantity, unit)
    return Line("item", trimmed, sku, quantity, unit)


def _unglue(body: str, catalogue: Catalogue) -> str:
    """ "2<unit>" as "2 <unit>" when the letters are one of the catalogue's unit words; digits
    with other letters ("12mm") stay whole, as a part of a name."""
    units = catalogue.unit_words

    def split(m: regex.Match[str]) -> str:
        glued = _GLUED.match(m.group(0))
        if glued and normal(glued.group(2)) in units:
            return f"{glued.group(1)} {glued.group(2)}"
        return m.group(0)

    return regex.sub(r"(?<![\p{L}\p{N}])\d[\d.,]*\p{L}+", split, body)


def _quantity(token: str) -> Decimal | None:
    """A number as written: "1,200" and "1,200.5" grouped in threes, "1,5" a decimal comma."""
    if regex.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", token):
        token = token.replace(",", "")
    else:
        token = token.replace(",", ".")
    try:
        number = Decimal(token)
    except InvalidOperation:
        return None
    if not number.is_finite() or number.as_tuple().exponent < -3:  # type: ignore[operator]
        return None
    return number


def _reading(
    rest: str, quantity: Decimal | None, catalogue: Catalogue
) -> tuple[float, Decimal | None, str, str]:
    """How well `rest` (the line without its quantity) names an item once unit words and filler
    are out (or with its unit words, or its filler, when they are the name: a word may be
    both), with the unit word it held."""
    units = catalogue.unit_words
    written = normal(rest).split()
    words = [w for w in written if w not in _FILLER]
    unit = next((w for w in words if w in units), "")
    best: tuple[float, Decimal | None, str, str] = (0.0, quantity, "", unit)
    named = (
        " ".join(w for w in words if w not in units),
        " ".join(words),
        " ".join(w for w in written if w not in units),  # an item called "please"
    )
    for name in dict.fromkeys(named):
        if name:
            score = max(_scores(name, catalogue).values(), default=0.0)
            if score > best[0]:
                best = (score, quantity, name, unit if name != " ".join(words) else "")
    return best


def _scores(name: str, catalogue: Catalogue) -> dict[int, float]:
    """How well `name` names each item (by position) that it names at all: the best of the
    item's names, by the mean of rapidfuzz's WRatio (typos, partial names) and token_set_ratio
    (words in another order, extra words). A mean of GOOD needs both at least 2 x GOOD - 100,
    so names below that are cut in rapidfuzz's own loop."""
    cutoff = 2 * GOOD - 100
    ratio = process.extract(
        name, catalogue.names, scorer=fuzz.WRatio, limit=None, score_cutoff=cutoff
    )
    words = process.extract(
        name, catalogue.names, scorer=fuzz.token_set_ratio, limit=None, score_cutoff=cutoff
    )
    by_words = {i: score for _n, score, i in words}
    out: dict[int, float] = {}
    for _n, score, i in ratio:
        if i in by_words:
            item = catalogue.owners[i]
            out[item] = max(out.get(item, 0.0), (score + by_words[i]) / 2)
    return out


def _candidates(name: str, unit: str, catalogue: Catalogue) -> list[Item]:
    """The item `name` names, or the items it may name (best first); none when nothing is
    close. An exact name or alias is the item; a unit word only some candidates sell in
    narrows them."""
    if not name:
        return []
    if name in catalogue.exact:
        return [catalogue.items[catalogue.exact[name]]]
    scored = sorted(_scores(name, catalogue).items(), key=lambda s: (-s[1], s[0]))
    best = scored[0][1] if scored else 0.0
    if best < GOOD:
        return []
    close = [catalogue.items[n] for n, s in scored if s >= best - CLOSE][:5]
    if unit and len(close) > 1:
        selling = [i for i in close if unit in {normal(w) for w in (i.unit, *i.unit_words)}]
        if selling:
            close = selling
    return close
