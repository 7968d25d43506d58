"""The catalogue: what a business sells, at what price and tax, read from `data/catalogue.yaml`
beside the flows and checked at load, every mistake at its file:line.

    currency: INR            # ISO 4217
    locale: en_IN            # how amounts are written (Babel's locale names)
    tax_name: GST
    payment_terms_days: 15   # invoice due date = order date + this
    discounts:               # the highest rule whose min_subtotal <= subtotal applies
      - {min_subtotal: "10000", percent: "5"}
    items:
      - sku: CEM-OPC53
        name: Cement OPC 53 grade
        aliases: [cement, opc cement]
        unit: bag
        unit_words: [bag, bags, bori]
        price: "50.00"
        tax_rate: "0.28"
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import regex
from babel import Locale, UnknownLocaleError
from babel.numbers import get_currency_precision, list_currencies

from engine.errors import Problem
from engine.flows.source import SourceError, YList, YMap, decode, load

FILE = "data/catalogue.yaml"  # under FLOWS_DIR
MAX_ITEMS = 10_000
MAX_BYTES = 5 * 1024 * 1024
TOP_KEYS = {
    "currency",
    "locale",
    "tax_name",
    "payment_terms_days",
    "discounts",
    "items",
    "business",
}
ITEM_KEYS = {"sku", "name", "aliases", "unit", "unit_words", "price", "tax_rate"}
_SPACES = regex.compile(r"[^\p{L}\p{N}]+")


def normal(text: str) -> str:
    """Lower case, accents dropped, every run of other characters one space: how names and
    what customers write are compared."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    return _SPACES.sub(" ", plain).strip()


@dataclass(frozen=True, slots=True)
class Item:
    sku: str
    name: str
    unit: str
    price: Decimal
    tax_rate: Decimal  # a fraction: 0.28 is 28 %
    aliases: tuple[str, ...] = ()
    unit_words: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """What a customer may call it, normalised: its name and aliases."""
        return tuple(dict.fromkeys(normal(n) for n in (self.name, *self.aliases)))


@dataclass(frozen=True, slots=True)
class Discount:
    min_subtotal: Decimal
    percent: Decimal


@dataclass(frozen=True, slots=True)
class Catalogue:
    items: tuple[Item, ...]
    currency: str = "USD"
    locale: str = "en_US"
    tax_name: str = "Tax"
    payment_terms_days: int = 0
    discounts: tuple[Discount, ...] = ()
    business: str = ""
    # Derived from the items once, for the parser: by sku; every normalised name and alias with
    # the position of the item it names (scored in one pass of rapidfuzz over the list); the
    # exact names; every unit word, normalised.
    by_sku: dict[str, Item] = field(init=False, compare=False, default_factory=dict)
    names: list[str] = field(init=False, compare=False, default_factory=list)
    owners: list[int] = field(init=False, compare=False, default_factory=list)
    exact: dict[str, int] = field(init=False, compare=False, default_factory=dict)
    unit_words: frozenset[str] = field(init=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        self.by_sku.update((i.sku, i) for i in self.items)
        for n, item in enumerate(self.items):
            self.names.extend(item.names)
            self.owners.extend(n for _ in item.names)
            for name in item.names:
                self.exact.setdefault(name, n)
        units = frozenset(normal(w) for i in self.items for w in (i.unit, *i.unit_words))
        object.__setattr__(self, "unit_words", units)  # frozen: set once, here

    @property
    def places(self) -> int:
        """Decimal places of the currency (2 for INR and EUR, 0 for JPY)."""
        return int(get_currency_precision(self.currency))


class CatalogueError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def load_catalogue(path: Path) -> Catalogue:
    """The catalogue at `path`, or CatalogueError with every problem at its line."""
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CatalogueError([Problem(file, 1, f"cannot read the catalogue: {e}")]) from None
    if len(data) > MAX_BYTES:
        raise CatalogueError([Problem(file, 1, "the catalogue is over 5 MiB")])
    try:
        doc, errors = load(decode(data))
    except SourceError as e:
        raise CatalogueError([Problem(file, e.line, e.message)]) from None
    reader = _Reader(file)
    reader.problems.extend(Problem(file, e.line, e.message) for e in errors)
    catalogue = reader.catalogue(doc)
    if reader.problems or catalogue is None:
        raise CatalogueError(reader.problems or [Problem(file, 1, "no catalogue")])
    return catalogue


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def err(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, message))

    def catalogue(self, doc: Any) -> Catalogue | None:
        if not isinstance(doc, YMap):
            self.err(getattr(doc, "line", 1), "the catalogue is a mapping: currency:, items: ...")
            return None
        for key in sorted(set(doc) - TOP_KEYS):
            self.err(
                doc.line_of(key), f"unknown key {key!r} (known: {', '.join(sorted(TOP_KEYS))})"
            )
        currency = self.currency(doc)
        places = int(get_currency_precision(currency))
        locale = self.text(doc, "locale", "en_US")
        try:
            Locale.parse(locale)
        except (UnknownLocaleError, ValueError, TypeError):
            self.err(doc.line_of("locale"), f"locale: {locale!r} is not a locale (like en_IN)")
            locale = "en_US"
        terms = self.text(doc, "payment_terms_days", "0")
        if not terms.isdigit() or int(terms) > 365:
            self.err(doc.line_of("payment_terms_days"), "payment_terms_days: 0 to 365 days")
            terms = "0"
        items = self.items(doc, places)
        return Catalogue(
            items=tuple(items),
            currency=currency,
            locale=locale,
            tax_name=self.text(doc, "tax_name", "Tax"),
            payment_terms_days=int(terms),
            discounts=tuple(self.discounts(doc, places)),
            business=self.text(doc, "business", ""),
        )

    def text(self, doc: YMap, key: str, default: str) -> str:
        value = doc.get(key)
        if value is None:
            return default
        if isinstance(value, YMap | YList | bool):
            self.err(doc.line_of(key), f"{key}: a text")
            return default
        return str(value).strip() or default

    def currency(self, doc: YMap) -> str:
        code = self.text(doc, "currency", "")
        if not code:
            self.err(doc.line, "currency: the ISO 4217 code of the prices (like INR) is required")
            return "USD"
        if code.upper() not in list_currencies():
            self.err(doc.line_of("currency"), f"currency: {code!r} is not an ISO 4217 code")
            return "USD"
        return code.upper()

    def decimal(
        self, value: Any, line: int, what: str, *, places: int | None = None
    ) -> Decimal | None:
        if isinstance(value, YMap | YList | bool) or value is None:
            self.err(line, f'{what}: a number, like "50.00"')
            return None
        text = str(value).strip()
        try:
            number = Decimal(text)
        except InvalidOperation:
            self.err(line, f"{what}: {text!r} is not a number")
            return None
        if not number.is_finite() or number < 0:
            self.err(line, f"{what}: {text!r} must be zero or more")
            return None
        exponent = number.as_tuple().exponent
        if places is not None and isinstance(exponent, int) and -exponent > places:
            self.err(line, f"{what}: {text!r} has more than {places} decimal places")
            return None
        return number

    def discounts(self, doc: YMap, places: int) -> list[Discount]:
        raw = doc.get("discounts")
        if raw is None:
            return []
        if not isinstance(raw, YList):
            self.err(doc.line_of("discounts"), "discounts: a list of {min_subtotal:, percent:}")
            return []
        out: list[Discount] = []
        for n, rule in enumerate(raw):
            line = raw.line_of(n)
            if not isinstance(rule, YMap) or set(rule) != {"min_subtotal", "percent"}:
                self.err(line, 'a discount is {min_subtotal: "10000", percent: "5"}')
                continue
            least = self.decimal(
                rule["min_subtotal"], rule.line_of("min_subtotal"), "min_subtotal", places=places
            )
            percent = self.decimal(rule["percent"], rule.line_of("percent"), "percent")
            if percent is not None and not 0 < percent <= 100:
                self.err(rule.line_of("percent"), "percent: more than 0, at most 100")
                continue
            if least is None or percent is None:
                continue
            if any(d.min_subtotal == least for d in out):
                self.err(line, f"two discounts from the same min_subtotal {least}")
                continue
            out.append(Discount(least, percent))
        return sorted(out, key=lambda d: d.min_subtotal)

    def items(self, doc: YMap, places: int) -> list[Item]:
        raw = doc.get("items")
        if not isinstance(raw, YList) or not raw:
            self.err(doc.line_of("items") if "items" in doc else doc.line, "items: a list of items")
            return []
        if len(raw) > MAX_ITEMS:
            self.err(doc.line_of("items"), f"more than {MAX_ITEMS:,} items")
            return []
        out: list[Item] = []
        skus: dict[str, int] = {}
        names: dict[str, tuple[str, int]] = {}  # a normalised name or alias -> sku, line
        for n, entry in enumerate(raw):
            item = self.item(entry, raw.line_of(n), places)
            if item is None:
                continue
            line = entry.line_of("sku")
            if item.sku.casefold() in skus:
                self.err(line, f"sku {item.sku!r} is already at line {skus[item.sku.casefold()]}")
                continue
            skus[item.sku.casefold()] = line
            for name in item.names:
                if not name:
                    self.err(entry.line_of("name"), f"{item.sku}: a name needs letters or digits")
                elif name in names and names[name][0] != item.sku:
                    sku, at = names[name]
                    where = entry.line_of("aliases") if "aliases" in entry else line
                    self.err(where, f"{name!r} names both {sku} (line {at}) and {item.sku}")
                else:
                    names.setdefault(name, (item.sku, line))
            out.append(item)
        return out

    def item(self, entry: Any, line: int, places: int) -> Item | None:
        if not isinstance(entry, YMap):
            self.err(line, "an item is a mapping: sku:, name:, unit:, price:, tax_rate:")
            return None
        for key in sorted(set(entry) - ITEM_KEYS):
            self.err(
                entry.line_of(key),
                f"unknown item key {key!r} (known: {', '.join(sorted(ITEM_KEYS))})",
            )
        missing = sorted({"sku", "name", "unit", "price"} - set(entry))
        if missing:
            self.err(line, f"an item needs {', '.join(missing)}")
            return None
        sku, name, unit = (self.text(entry, k, "") for k in ("sku", "name", "unit"))
        price = self.decimal(entry["price"], entry.line_of("price"), f"{sku}: price", places=places)
        rate = self.decimal(
            entry.get("tax_rate", "0"), entry.line_of("tax_rate"), f"{sku}: tax_rate"
        )
        if rate is not None and rate >= 1:
            self.err(entry.line_of("tax_rate"), f"{sku}: tax_rate is a fraction: 0.28 for 28 %")
            rate = None
        aliases = self.words(entry, "aliases")
        unit_words = self.words(entry, "unit_words")
        if not sku or not name or not unit or price is None or rate is None:
            if not (sku and name and unit):
                self.err(line, "sku, name and unit must not be empty")
            return None
        return Item(sku, name, unit, price, rate, tuple(aliases), tuple(unit_words))

    def words(self, entry: YMap, key: str) -> list[str]:
        raw = entry.get(key)
        if raw is None:
            return []
        if not isinstance(raw, YList) or not all(isinstance(w, str) and w.strip() for w in raw):
            self.err(entry.line_of(key), f"{key}: a list of words, like [cement, opc cement]")
            return []
        return [w.strip() for w in raw]
