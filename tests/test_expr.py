"""Flow expressions, from a table: what each gives, or the error it raises, in Decimal."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from engine.flows.expr import Evaluator, ExprError, parse

CART = [
    {"name": "Margherita", "price": D("9.50"), "qty": 2},
    {"name": "Cola", "price": D("2.00"), "qty": 1},
]
NAMES: dict[str, Any] = {
    "cart": CART,
    "total": D("21.00"),
    "method": "delivery",
    "name": "Ana",
    "count": "12",
    "zero": 0,
    "place": {"latitude": D("52.37"), "longitude": D("4.89"), "name": None},
    "empty": [],
    "yes": True,
    "blank": "",
}

VALUES: list[tuple[str, Any]] = [
    # numbers are Decimal, exactly
    ("9.99", D("9.99")),
    ("9.99 * 3", D("29.97")),
    ("0.1 + 0.2", D("0.3")),
    ("1 / 4", D("0.25")),
    ("10 // 3", 3),
    ("10 % 3", 1),
    ("2 ** 10", 1024),
    ("-total", D("-21.00")),
    ("1_000.50 + 1", D("1001.50")),
    ("round(2.675, 2)", D("2.68")),  # half up, not banker's, not float
    ("round(2.5)", D("3")),
    ("round(total / 3, 2)", D("7.00")),
    ("abs(-4.5)", D("4.5")),
    ("int(9.99)", 9),
    ("min(3, 1.5, 2)", D("1.5")),
    ("max([i.price for i in cart])", D("9.50")),
    ("min(cart[0].price, 5)", 5),
    # lists and records
    ("len(cart)", 2),
    ("len(empty)", 0),
    ("len(unset)", 0),
    ("sum([i.price * i.qty for i in cart])", D("21.00")),
    ("sum(cart, 'price')", D("11.50")),
    ("sum(empty)", 0),
    ("[i.name for i in cart if i.qty > 1]", ["Margherita"]),
    ("cart[1].name", "Cola"),
    ("cart[-1].qty", 1),
    (
        "cart + [{'name': 'Fries', 'price': 3.5, 'qty': 1}]",
        [*CART, {"name": "Fries", "price": D("3.5"), "qty": 1}],
    ),
    ("place.latitude", D("52.37")),
    ("place.name", None),
    ("place.missing", None),
    ("unset.field", None),
    ("{'a': 1}['a']", 1),
    # conditions
    ("total >= 20 and method == 'delivery'", True),
    ("total > 50 or method == 'pickup'", False),
    ("not yes", False),
    ("1 < 2 < 3", True),
    ("method in ['delivery', 'pickup']", True),
    ("'Cola' in [i.name for i in cart]", True),
    ("'liv' in 'delivery'", True),
    ("'x' not in method", True),
    ("unset > 3", False),  # a slot not set yet: comparisons are simply false
    ("unset == None", True),
    ("unset is None", True),
    ("blank == ''", True),
    ("0 if total >= 50 else 4.90", D("4.90")),
    ("'free' if len(cart) > 5 else 'paid'", "paid"),
    ("total == 21", True),
    # text
    ("'Hi ' + name", "Hi Ana"),
    ("upper(name)", "ANA"),
    ("lower('ÀB')", "àb"),
    ("trim('  x ')", "x"),
    ("text(total)", "21.00"),
    ("text(cart[0].qty)", "2"),
    ("default(unset, 'there')", "there"),
    ("default(blank, 'there')", "there"),
    ("default(name, 'there')", "Ana"),
    ("money(1234.5)", "1,234.50"),
    ("join([i.name for i in cart])", "Margherita, Cola"),
    ("join([i.name + ' x ' + text(i.qty) for i in cart], '\\n')", "Margherita x 2\nCola x 1"),
    ("join(empty, '; ')", ""),
    ("money(total * 1.18)", "24.78"),
    ("money(0.005)", "0.01"),
    # reading numbers customers write
    ("number('5.')", D("5")),
    ("number('3 cakes')", D("3")),
    ("number('1,250.50 rupees')", D("1250.50")),
    ("number('none')", None),
    ("number('none', 0)", 0),
    ("number(count) > 10", True),
    ("number(7)", 7),
    # list helpers: positions count from 1, as a customer does
    ("find(cart, 'name', 'Cola').price", D("2.00")),
    ("find(cart, 'name', 'Tea')", None),
    ("len(where(cart, 'qty', 2))", 1),
    ("[i.name for i in remove(cart, 1)]", ["Cola"]),
    ("len(remove(cart, 9))", 2),
    ("[i.name for i in remove(cart, 'name', 'Margherita')]", ["Cola"]),
    ("update(cart, 2, {'qty': 5})[1].qty", 5),
    ("update(cart, 2, {'qty': 5})[1].name", "Cola"),
    ("update(cart, 'name', 'Margherita', {'qty': 3})[0].qty", 3),
    ("update(['a', 'b'], 1, 'z')", ["z", "b"]),
    ("update(cart, 7, {'qty': 1}) == cart", True),
    ("merge(place, {'name': 'Home'}).name", "Home"),
    ("remove(empty, 1)", []),
    # dates as typed answers keep them, written for a customer
    ("format_date('2026-12-08T17:00+05:30')", "Tue 08 Dec 2026, 17:00"),
    ("format_date('2026-12-08', '%d %B')", "08 December"),
    ("format_date('17:30', '%I:%M %p')", "05:30 PM"),
    ("format_date(unset)", ""),
    # YAML's words for the constants work too
    ("true and not false", True),
    ("none is None", True),
    ("merge(place, {'name': {'first': 'Home'}}).name.first", "Home"),
]

ERRORS: list[tuple[str, str]] = [
    ("join(total)", "join needs a list, got the number 21.00"),
    ("'9.00' * 2", "* needs numbers, got the text '9.00'"),
    ("count > 10", "cannot compare the text '12' with the number 10"),
    ("'a' + 1", "cannot add the text 'a' and the number 1"),
    ("total + unset", "cannot add the number 21.00 and nothing"),
    ("1 / zero", "division by zero"),
    ("2 ** 1000", "an exponent over 100"),
    ("sum(method)", "sum needs a list"),
    ("sum(['a'])", "sum needs numbers"),
    ("min(empty)", "min of nothing"),
    ("round(1, 20)", "round: places from 0 to 12"),
    ("upper(total)", "upper needs text"),
    ("total.amount", "has no fields"),
    ("cart[9]", "IndexError"),
    ("5 in total", "cannot look inside the number"),
    ("remove(cart)", "remove.list, position. or remove.list, field, value."),
    ("update(total, 1, 2)", "update needs a list, got the number 21.00"),
    ("remove(cart, 'x')", "remove needs numbers"),
    ("format_date('soon')", "format_date: 'soon' is not a date or time"),
    ("format_date(total)", "format_date needs a date as text"),
]

UNREADABLE: list[tuple[str, str]] = [
    ("", "an empty expression"),
    ("total >", "not an expression"),
    ("__import__('os')", "unknown function '__import__'"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("name.upper()", "no methods"),
    ("(1).__class__", "cannot start with '_'"),
    ("lambda: 1", "lambda is not allowed"),
    ("{1, 2}", "a set is not allowed"),
    ("f'{name}'", "an f-string is not allowed"),
    ("[*cart]", "'*' is not allowed"),
    ("round(x, places=2)", "give arguments by position"),
    ("1j", "complex literals are not allowed"),
    ("b'x'", "bytes literals are not allowed"),
    ("x" * 1001, "longer than 1000 characters"),
]


@pytest.mark.parametrize(("source", "expected"), VALUES, ids=[v[0] for v in VALUES])
def test_values(source: str, expected: Any) -> None:
    value = Evaluator()(parse(source), NAMES)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(("source", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_say_what_went_wrong(source: str, message: str) -> None:
    with pytest.raises(ExprError, match=message.replace("(", r"\(").replace("*", r"\*")):
        Evaluator()(parse(source), NAMES)


@pytest.mark.parametrize(("source", "message"), UNREADABLE, ids=[u[0][:30] for u in UNREADABLE])
def test_what_cannot_be_read_is_refused_when_the_flow_loads(source: str, message: str) -> None:
    with pytest.raises(ExprError, match=message.replace("(", r"\(").replace("*", r"\*")):
        parse(source)


def test_the_names_an_expression_reads_are_known_before_it_runs() -> None:
    """Loop variables and functions are not slots; everything else must be one."""
    expr = parse("sum([i.price * qty for i in cart if i.name != skip]) + fee")
    assert expr.names == {"cart", "qty", "skip", "fee"}


def test_no_value_is_ever_a_float() -> None:
    for source, _expected in VALUES:
        value = Evaluator()(parse(source), NAMES)
        assert not isinstance(value, float), source
