"""The ordering domain's pure core: the catalogue's checks, reading orders (a table of cases on
two catalogues, and a property), pricing (a table of cases), and moves of an order's status."""

from __future__ import annotations

import string
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Levenshtein

from ordering.catalogue import Catalogue, CatalogueError, Discount, Item, load_catalogue
from ordering.orders import Refused, apply_lines, moved
from ordering.parsing import read_order, split_lines
from ordering.pricing import CartLine, quote
from ordering.texts import money

ROOT = Path(__file__).resolve().parent.parent
SUPPLIES = load_catalogue(ROOT / "flows" / "data" / "catalogue.yaml")

BAKERY_YAML = """\
currency: EUR
locale: de_DE
tax_name: MwSt
discounts:
  - {min_subtotal: "50", percent: "10"}
items:
  - sku: B-SOUR
    name: Sourdough loaf
    aliases: [sourdough, sauerteigbrot]
    unit: loaf
    unit_words: [loaf, loaves, brot]
    price: "4.20"
    tax_rate: "0.07"
  - sku: B-CROI
    name: Butter croissant
    aliases: [croissant, croissants]
    unit: piece
    unit_words: [piece, pieces, stück]
    price: "1.35"
    tax_rate: "0.07"
  - sku: B-BAGW
    name: Bagel sesame
    aliases: [sesame bagel]
    unit: piece
    unit_words: [piece, pieces]
    price: "1.10"
    tax_rate: "0.07"
  - sku: B-BAGP
    name: Bagel poppy seed
    aliases: [poppy bagel]
    unit: piece
    unit_words: [piece, pieces]
    price: "1.10"
    tax_rate: "0.07"
  - sku: C-LATTE
    name: Caffè latte
    aliases: [latte]
    unit: cup
    unit_words: [cup, cups, becher]
    price: "3.50"
    tax_rate: "0.19"
"""


@pytest.fixture(scope="module")
def bakery(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    path = tmp_path_factory.mktemp("bakery") / "catalogue.yaml"
    path.write_text(BAKERY_YAML)
    return load_catalogue(path)


def read(text: str, catalogue: Catalogue) -> list[tuple[str, str, str]]:
    return [
        (line.kind, line.sku or ",".join(line.candidates), str(line.quantity.normalize()))
        for line in read_order(text, catalogue)
    ]


SUPPLY_CASES = [
    ("Cement x 100, sand 20 bags", [("item", "CEM-OPC53", "1E+2"), ("item", "SAND-R", "2E+1")]),
    ("100 bags cement", [("item", "CEM-OPC53", "1E+2")]),
    ("cemnt 100", [("item", "CEM-OPC53", "1E+2")]),
    ("2 tmt bar 12mm", [("item", "TMT-12", "2")]),
    ("tmt bar 16mm x 3", [("item", "TMT-16", "3")]),
    ("cement opc 53 grade 40", [("item", "CEM-OPC53", "4E+1")]),
    ("bricks 1,200", [("item", "BRK-RED", "1.2E+3")]),
    ("500 bricks", [("item", "BRK-RED", "5E+2")]),
    ("gitti 30 cft", [("item", "AGG-20", "3E+1")]),
    ("a bag of cement", [("item", "CEM-OPC53", "1")]),
    ("two bags sand", [("item", "SAND-R", "2")]),
    ("sand", [("item", "SAND-R", "1")]),
    (
        "10 bags of cement and 5 bags of sand",
        [("item", "CEM-OPC53", "1E+1"), ("item", "SAND-R", "5")],
    ),
    ("1. cement 10\n2. sand 5", [("item", "CEM-OPC53", "1E+1"), ("item", "SAND-R", "5")]),
    ("- cement 10\n- sand 5\n\n", [("item", "CEM-OPC53", "1E+1"), ("item", "SAND-R", "5")]),
    ("cement*7; sand 2.5", [("item", "CEM-OPC53", "7"), ("item", "SAND-R", "2.5")]),
    ("tmt bar 5", [("ambiguous", "TMT-12,TMT-16", "5")]),
    ("unobtainium 4", [("unknown", "", "0")]),
    ("remove sand", [("remove", "SAND-R", "0")]),
    ("cement 0", [("remove", "CEM-OPC53", "0")]),
    ("sand 10000000", [("bad", "SAND-R", "1E+7")]),
    ("CEMENT  X  100!!", [("item", "CEM-OPC53", "1E+2")]),
    # a unit word stuck to the number; "12mm" is no unit word here, so it stays in the name
    ("100bags cement, 20cft gitti", [("item", "CEM-OPC53", "1E+2"), ("item", "AGG-20", "2E+1")]),
    ("sand 1,5", [("item", "SAND-R", "1.5")]),  # a decimal comma; "1,200" groups thousands
    ("no sand", [("remove", "SAND-R", "0")]),
    ("cement - 10", [("item", "CEM-OPC53", "1E+1")]),  # a dash between, not a minus
    # what cannot be a quantity is named back, never read as 1
    ("sand -5", [("bad", "", "0")]),
    ("sand x -5", [("bad", "", "0")]),
    ("sand 1e3", [("bad", "", "0")]),
    ("NaN sand", [("bad", "", "0")]),
    ("sand 1/2", [("bad", "", "0")]),
    ("sand ½", [("bad", "", "0")]),
    ("sand 1.2345", [("bad", "", "0")]),
]

BAKERY_CASES = [
    ("Sourdough x 2, croissant 6 pieces", [("item", "B-SOUR", "2"), ("item", "B-CROI", "6")]),
    ("3 loaves sourdough", [("item", "B-SOUR", "3")]),
    ("croisant 4", [("item", "B-CROI", "4")]),
    ("2 caffe latte", [("item", "C-LATTE", "2")]),
    ("2 caffè latte", [("item", "C-LATTE", "2")]),
    ("bagel 4", [("ambiguous", "B-BAGW,B-BAGP", "4")]),
    ("4 poppy bagel", [("item", "B-BAGP", "4")]),
    ("a dozen croissants", [("item", "B-CROI", "12")]),
    ("cement 100", [("unknown", "", "0")]),
    ("remove latte", [("remove", "C-LATTE", "0")]),
    ("sourdough 2 and latte 1", [("item", "B-SOUR", "2"), ("item", "C-LATTE", "1")]),
    ("2 stück croissant", [("item", "B-CROI", "2")]),
    ("2stück croissant", [("item", "B-CROI", "2")]),
    ("2,5 latte", [("item", "C-LATTE", "2.5")]),
]


@pytest.mark.parametrize(("text", "lines"), SUPPLY_CASES)
def test_orders_read_against_the_supplies_catalogue(text: str, lines: list[object]) -> None:
    assert read(text, SUPPLIES) == lines


@pytest.mark.parametrize(("text", "lines"), BAKERY_CASES)
def test_orders_read_against_the_bakery_catalogue(
    text: str, lines: list[object], bakery: Catalogue
) -> None:
    assert read(text, bakery) == lines


def test_the_parser_holds_no_catalogue_word() -> None:
    source = (ROOT / "ordering" / "parsing.py").read_text().casefold()
    words = {
        w
        for c in (SUPPLIES,)
        for i in c.items
        for w in (*i.names, *(n.casefold() for n in i.unit_words), i.unit)
        if len(w) > 3
    }
    words |= {"sourdough", "croissant", "bagel", "latte", "loaf", "loaves"}
    assert not [w for w in sorted(words) if w in source]


def test_lines_split_at_commas_but_not_inside_numbers() -> None:
    assert split_lines("bricks 1,200, sand 5") == ["bricks 1,200", "sand 5"]
    assert split_lines("a,b\nc;d") == ["a", "b", "c", "d"]
    assert split_lines("salt and pepper 2") == ["salt and pepper 2"]  # one quantity: one line
    assert len(split_lines("x 1\n" * 500)) == 50  # at most 50 lines are read
    read = read_order("sand 1\n" * 60, SUPPLIES)
    assert len(read) == 51 and read[-1].kind == "skipped"  # ... and the customer is told


def test_a_huge_or_hostile_text_is_read_in_bounded_time() -> None:
    lines = read_order("ce" * 30_000 + " 5\n" + "\u202e\x00 9" * 100, SUPPLIES)
    assert all(len(line.text) <= 60 for line in lines)


# --- a property over generated catalogues ----------------------------------------------------

_word = st.text(alphabet=string.ascii_lowercase, min_size=6, max_size=10)


@st.composite
def catalogues(draw: st.DrawFn) -> Catalogue:
    names = draw(st.lists(_word, min_size=2, max_size=6, unique=True))
    for a in names:
        for b in names:
            if a != b:
                assume(Levenshtein.distance(a, b) >= 4)
    units = draw(
        st.lists(
            st.sampled_from(["box", "kg", "crate", "tin", "pack"]),
            min_size=1,
            max_size=2,
            unique=True,
        )
    )
    items = tuple(
        Item(f"S{n}", name, units[0], Decimal("1.00"), Decimal(0), (), tuple(units))
        for n, name in enumerate(names)
    )
    return Catalogue(items)


def _typo(word: str, where: int, kind: int) -> str:
    i = where % len(word)
    if kind == 0:
        return word[:i] + word[i + 1 :]  # a letter missing
    if kind == 1:
        return word[:i] + "q" + word[i:]  # one too many
    return word[:i] + ("z" if word[i] != "z" else "y") + word[i + 1 :]  # one wrong


@settings(
    max_examples=150,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
    deadline=None,
)
@given(
    catalogue=catalogues(),
    pick=st.integers(min_value=0, max_value=100),
    typo=st.tuples(st.booleans(), st.integers(0, 20), st.integers(0, 2)),
    quantity=st.integers(min_value=1, max_value=5000),
    before=st.booleans(),
    unit=st.booleans(),
    comma=st.booleans(),
)
def test_an_alias_with_at_most_one_typo_is_read_whatever_the_form(
    catalogue: Catalogue,
    pick: int,
    typo: tuple[bool, int, int],
    quantity: int,
    before: bool,
    unit: bool,
    comma: bool,
) -> None:
    target = catalogue.items[pick % len(catalogue.items)]
    other = catalogue.items[(pick + 1) % len(catalogue.items)]
    name = _typo(target.name, typo[1], typo[2]) if typo[0] else target.name
    word = f" {target.unit_words[pick % len(target.unit_words)]}" if unit else ""
    line = f"{quantity}{word} {name}" if before else f"{name} {quantity}{word}"
    text = line + (", " if comma else "\n") + f"{other.name} 1"
    lines = read_order(text, catalogue)
    assert [(x.kind, x.sku, x.quantity) for x in lines] == [
        ("item", target.sku, Decimal(quantity)),
        ("item", other.sku, Decimal(1)),
    ]


# --- pricing ----------------------------------------------------------------------------------


def cat(
    items: list[tuple[str, str, str]], discounts: list[tuple[str, str]] = (), currency: str = "INR"
) -> Catalogue:  # type: ignore[assignment]
    return Catalogue(
        tuple(Item(sku, sku, "u", Decimal(p), Decimal(r)) for sku, p, r in items),
        currency=currency,
        discounts=tuple(Discount(Decimal(m), Decimal(p)) for m, p in discounts),
    )


PRICING = [
    # (items, discounts, cart, subtotal, discount, tax, total)
    (
        [("A", "50.00", "0.28"), ("B", "42.50", "0.05")],
        [],
        [("A", "100"), ("B", "20")],
        "5850.00",
        "0.00",
        "1442.50",
        "7292.50",
    ),
    (
        [("A", "50.00", "0.28"), ("B", "412.00", "0.18")],
        [("10000", "5")],
        [("A", "200"), ("B", "10")],
        "14120.00",
        "706.00",
        "3364.52",
        "16778.52",
    ),
    # the highest rule that fits applies
    (
        [("A", "100.00", "0")],
        [("100", "2"), ("1000", "5"), ("500", "3")],
        [("A", "7")],
        "700.00",
        "21.00",
        "0.00",
        "679.00",
    ),
    # exactly at min_subtotal
    ([("A", "100.00", "0")], [("1000", "5")], [("A", "10")], "1000.00", "50.00", "0.00", "950.00"),
    # discount rounded half up: 0.335 -> 0.34 (1% of 33.50)
    ([("A", "33.50", "0")], [("0", "1")], [("A", "1")], "33.50", "0.34", "0.00", "33.16"),
    # tax rounded once at the end, not per line: 3 x 0.0175 = 0.0525 -> 0.05 (per line: 0.06)
    (
        [("A", "0.35", "0.05"), ("B", "0.35", "0.05"), ("C", "0.35", "0.05")],
        [],
        [("A", "1"), ("B", "1"), ("C", "1")],
        "1.05",
        "0.00",
        "0.05",
        "1.10",
    ),
    # tax after the discount: 1000 x 0.95 x 0.18 = 171.00
    (
        [("A", "100.00", "0.18")],
        [("1000", "5")],
        [("A", "10")],
        "1000.00",
        "50.00",
        "171.00",
        "1121.00",
    ),
    # a fractional quantity: the line total rounded half up to the paisa (2.5 x 0.99 = 2.475)
    ([("A", "0.99", "0")], [], [("A", "2.5")], "2.48", "0.00", "0.00", "2.48"),
    # an unknown sku is left out
    ([("A", "1.00", "0")], [], [("A", "1"), ("GONE", "5")], "1.00", "0.00", "0.00", "1.00"),
]


@pytest.mark.parametrize(
    ("items", "discounts", "cart", "subtotal", "discount", "tax", "total"), PRICING
)
def test_quotes(items, discounts, cart, subtotal, discount, tax, total) -> None:  # type: ignore[no-untyped-def]
    q = quote([CartLine(s, Decimal(n)) for s, n in cart], cat(items, discounts))
    assert (str(q.subtotal), str(q.discount), str(q.tax), str(q.total)) == (
        subtotal,
        discount,
        tax,
        total,
    )
    assert q.total == q.subtotal - q.discount + q.tax


def test_a_currency_without_cents_rounds_to_whole_units() -> None:
    q = quote([CartLine("A", Decimal(3))], cat([("A", "333", "0.1")], currency="JPY"))
    assert (str(q.subtotal), str(q.tax), str(q.total)) == ("999", "100", "1099")


def test_amounts_in_the_locale_of_the_catalogue() -> None:
    assert money(Decimal("123456.5"), "INR", "en_IN") == "₹1,23,456.50"
    assert money(Decimal("1234.5"), "EUR", "de_DE") == "1.234,50\xa0€"


# --- the catalogue's checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (('price: "4.20"', 'price: "4.2x"'), 12, "'4.2x' is not a number"),
        (('price: "4.20"', 'price: "-1"'), 12, "must be zero or more"),
        (('price: "4.20"', 'price: "4.201"'), 12, "more than 2 decimal places"),
        (("sku: B-CROI", "sku: b-sour"), 14, "sku 'b-sour' is already at line 7"),
        (
            ("aliases: [croissant, croissants]", "aliases: [croissant, sourdough]"),
            16,
            "'sourdough' names both B-SOUR",
        ),
        (("currency: EUR", "currency: EUX"), 1, "'EUX' is not an ISO 4217 code"),
        (("locale: de_DE", "locale: xx_YY"), 2, "not a locale"),
        (('tax_rate: "0.07"', 'tax_rate: "7"'), 13, "tax_rate is a fraction"),
        (('percent: "10"', 'percent: "0"'), 5, "more than 0, at most 100"),
        (("    unit: loaf\n", "    units: loaf\n"), 10, "unknown item key 'units'"),
        (("tax_name: MwSt", "tax_nme: MwSt"), 3, "unknown key 'tax_nme'"),
    ],
)
def test_a_bad_catalogue_is_refused_at_its_line(
    tmp_path: Path, change: tuple[str, str], line: int, message: str
) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text(BAKERY_YAML.replace(*change, 1))
    with pytest.raises(CatalogueError) as e:
        load_catalogue(path)
    assert [(p.line, message in p.message) for p in e.value.problems][:1] == [(line, True)], (
        e.value.problems
    )


def test_a_catalogue_that_is_not_yaml_or_empty(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text('currency: "INR\nitems: []\n')
    with pytest.raises(CatalogueError, match="never closed"):
        load_catalogue(path)
    path.write_text("currency: INR\nitems: []\n")
    with pytest.raises(CatalogueError, match="items: a list of items"):
        load_catalogue(path)


# --- carts and statuses ----------------------------------------------------------------------


def test_an_edit_sets_removes_and_adds() -> None:
    cart = [{"sku": "CEM-OPC53", "quantity": "10"}, {"sku": "SAND-R", "quantity": "5"}]
    lines = read_order("cement 12\nremove sand\n40 bricks", SUPPLIES)
    assert apply_lines(cart, lines) == [
        {"sku": "CEM-OPC53", "quantity": "12"},
        {"sku": "BRK-RED", "quantity": "40"},
    ]


def test_statuses_move_forward_only() -> None:
    order = {"number": 7, "status": "confirmed", "history": []}
    shipped = moved(order, "shipped", "t1")
    assert shipped["status"] == "shipped" and shipped["history"] == [
        {"status": "shipped", "at": "t1"}
    ]
    assert moved(shipped, "shipped", "t2") == shipped  # the same move again: no move
    for back in ("processing", "confirmed", "draft"):
        with pytest.raises(Refused, match="cannot go back"):
            moved(shipped, back, "t2")
    cancelled = moved(shipped, "cancelled", "t3", "out of stock")
    assert cancelled["reason"] == "out of stock"
    with pytest.raises(Refused, match="is cancelled"):
        moved(cancelled, "delivered", "t4")
    with pytest.raises(Refused, match="unknown status"):
        moved(order, "lost", "t4")


def test_an_item_named_like_a_filler_word_is_still_its_name() -> None:
    """Found by the property test: filler ("please", "need") is dropped before scoring, which
    left an item of that very name unreadable; its exact name still wins."""
    items = tuple(
        Item(f"S{n}", name, "box", Decimal("1.00"), Decimal(0), (), ("box",))
        for n, name in enumerate(["aaaaaa", "please"])
    )
    lines = read_order("aaaaaa 1\nplease 1", Catalogue(items))
    assert [(x.kind, x.sku, x.quantity) for x in lines] == [
        ("item", "S0", Decimal(1)),
        ("item", "S1", Decimal(1)),
    ]
