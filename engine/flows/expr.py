"""Expressions: what a flow computes and tests, in a sandbox, with money in Decimal.

    when: "total >= 50 and method == 'delivery'"
    set: {total: "= sum(cart, 'price')", fee: "= 0 if total >= 50 else 4.90"}
    say: "Total: {= money(total + fee)}"

Python's expression syntax (comparisons, arithmetic, `and`/`or`/`not`, `in`, `x if c else y`,
list and record literals, `[i.price for i in cart]`) evaluated by simpleeval, never `eval`. The
rules that make it safe for money and for designers:

- A decimal literal is a Decimal (`9.99` is exactly 9.99); no value is ever a float. Division
  gives a Decimal; `round` rounds half up.
- Arithmetic needs numbers on both sides: `"9.00" * 2` is an error, not "9.009.00"; `+` also
  joins two texts or two lists.
- Comparing with a slot that is not set yet (None) is simply false; comparing text with a
  number is an error that names both.
- `record.key` reads a record's field; there are no method calls and no names starting with `_`.
- Every name must be a slot the flow sets, a built-in value (`name`, `phone`, `text`) or a
  function listed in FUNCTIONS: `parse` rejects anything else, so a typo is a load-time error at
  file:line, not a silent false at run time.
"""

from __future__ import annotations

import ast
import functools
import operator as op
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, DivisionByZero, InvalidOperation
from typing import Any

from simpleeval import EvalWithCompoundTypes

from .values import Value, to_text

MAX_SOURCE = 1000  # characters of one expression
MAX_POWER = 100  # the largest exponent of **


class ExprError(Exception):
    """An expression that cannot be read (at load) or evaluated (at run time)."""


@dataclass(frozen=True, slots=True)
class Expr:
    source: str
    tree: ast.expr
    names: frozenset[str]  # the free names it reads (slots and built-in values)


# --- numbers ---------------------------------------------------------------------------------


def is_number(x: Any) -> bool:
    return isinstance(x, int | Decimal) and not isinstance(x, bool)


def _num(x: Any, what: str) -> Decimal | int:
    if not is_number(x):
        raise ExprError(f"{what} needs numbers, got {_show(x)}")
    return x  # type: ignore[no-any-return]


def _show(x: Any) -> str:
    if x is None:
        return "nothing (a slot not set yet)"
    if isinstance(x, str):
        return f"the text {x[:40]!r}"
    if isinstance(x, bool):
        return "yes/no"
    if isinstance(x, list):
        return "a list"
    if isinstance(x, dict):
        return "a record"
    return f"the number {x}"


def _arith(name: str, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        return fn(_num(a, name), _num(b, name))

    return apply


def _add(a: Any, b: Any) -> Any:
    if is_number(a) and is_number(b):
        return a + b
    if isinstance(a, str) and isinstance(b, str):
        return a + b
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    raise ExprError(f"cannot add {_show(a)} and {_show(b)}")


def _div(a: Any, b: Any) -> Decimal:
    return Decimal(_num(a, "/")) / Decimal(_num(b, "/"))


def _pow(a: Any, b: Any) -> Any:
    exponent: Any = _num(b, "**")
    if abs(exponent) > MAX_POWER:
        raise ExprError(f"an exponent over {MAX_POWER}")
    return _num(a, "**") ** exponent


def _order(name: str, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return False
        if (is_number(a) and is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
            return bool(fn(a, b))
        raise ExprError(f"cannot compare {_show(a)} with {_show(b)} ({name})")

    return compare


def _contains(container: Any, item: Any) -> bool:
    if container is None:
        return False
    if isinstance(container, str):
        if not isinstance(item, str):
            raise ExprError(f"cannot look for {_show(item)} in a text")
        return item in container
    if isinstance(container, list | dict):
        return item in container
    raise ExprError(f"cannot look inside {_show(container)}")


OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: _add,
    ast.Sub: _arith("-", op.sub),
    ast.Mult: _arith("*", op.mul),
    ast.Div: _div,
    ast.FloorDiv: _arith("//", op.floordiv),
    ast.Mod: _arith("%", op.mod),
    ast.Pow: _pow,
    ast.USub: lambda a: -_num(a, "-"),
    ast.UAdd: lambda a: +_num(a, "+"),
    ast.Not: op.not_,
    ast.Eq: op.eq,
    ast.NotEq: op.ne,
    ast.Lt: _order("<", op.lt),
    ast.LtE: _order("<=", op.le),
    ast.Gt: _order(">", op.gt),
    ast.GtE: _order(">=", op.ge),
    ast.Is: op.is_,
    ast.IsNot: op.is_not,
    ast.In: lambda a, b: _contains(b, a),
    ast.NotIn: lambda a, b: not _contains(b, a),
}


# --- functions -------------------------------------------------------------------------------

_FIRST_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)")


def number(value: Any, default: Any = None) -> Any:
    """A number from a number or a text ("5", "5.", "3 cakes", "1,250.50"); `default` if none."""
    if is_number(value):
        return value
    if isinstance(value, str):
        found = _FIRST_NUMBER.search(value[:200])
        if found:
            try:
                return Decimal(found.group(0).replace(",", "").rstrip(".") or "0")
            except InvalidOperation:
                pass
    return default


def _round(value: Any, places: Any = 0) -> Decimal:
    places = int(_num(places, "round"))
    if not 0 <= places <= 12:
        raise ExprError("round: places from 0 to 12")
    return Decimal(_num(value, "round")).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)


def _items(values: tuple[Any, ...]) -> list[Any]:
    if len(values) == 1 and isinstance(values[0], list):
        return list(values[0])
    return list(values)


def _sum(items: Any, key: Any = None) -> Any:
    if not isinstance(items, list):
        raise ExprError(f"sum needs a list, got {_show(items)}")
    total: Any = 0
    for item in items:
        value = item.get(key) if key is not None and isinstance(item, dict) else item
        if key is not None and not isinstance(item, dict):
            value = None
        total = _add(total, _num(value, "sum"))
    return total


def _min(*values: Any) -> Any:
    items = _items(values)
    if not items:
        raise ExprError("min of nothing")
    return min(_num(v, "min") for v in items)


def _max(*values: Any) -> Any:
    items = _items(values)
    if not items:
        raise ExprError("max of nothing")
    return max(_num(v, "max") for v in items)


def _len(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str | list | dict):
        return len(value)
    raise ExprError(f"len of {_show(value)}")


def money(value: Any, places: Any = 2) -> str:
    """1234.5 -> "1,234.50": grouped, rounded half up."""
    amount = _round(value, places)
    return f"{amount:,.{int(places)}f}"


def _text(value: Any) -> str:
    return to_text(value)


def _str_fn(name: str, fn: Callable[[str], str]) -> Callable[[Any], str]:
    def apply(value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ExprError(f"{name} needs text, got {_show(value)}")
        return fn(value)

    return apply


def _join(items: Any, separator: Any = ", ") -> str:
    """A list as one text: join([i.item for i in cart], "\n") writes one item a line."""
    if items is None:
        return ""
    if not isinstance(items, list):
        raise ExprError(f"join needs a list, got {_show(items)}")
    if not isinstance(separator, str):
        raise ExprError(f"join's separator must be text, got {_show(separator)}")
    return separator.join(to_text(i) for i in items)


def _list(items: Any, name: str) -> list[Any]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise ExprError(f"{name} needs a list, got {_show(items)}")
    return items


def _matches(item: Any, field: Any, value: Any) -> bool:
    return isinstance(item, dict) and item.get(field) == value


def _position(items: list[Any], position: Any, name: str) -> int | None:
    """A 1-based position, as a customer counts ("remove item 2"); None when out of range."""
    index = int(_num(position, name)) - 1
    return index if 0 <= index < len(items) else None


def _find(items: Any, field: Any, value: Any) -> Any:
    """The first record whose `field` equals `value`, or nothing."""
    return next((i for i in _list(items, "find") if _matches(i, field, value)), None)


def _where(items: Any, field: Any, value: Any) -> list[Any]:
    """The records whose `field` equals `value`."""
    return [i for i in _list(items, "where") if _matches(i, field, value)]


def _remove(items: Any, *how: Any) -> list[Any]:
    """remove(cart, 2): without the second item; remove(cart, 'sku', 'A1'): without the
    records whose sku is A1. A position past the end leaves the list as it is."""
    found = _list(items, "remove")
    if len(how) == 1:
        index = _position(found, how[0], "remove")
        return found if index is None else found[:index] + found[index + 1 :]
    if len(how) == 2:
        return [i for i in found if not _matches(i, how[0], how[1])]
    raise ExprError("remove(list, position) or remove(list, field, value)")


def _merge(record: Any, changes: Any) -> Any:
    if isinstance(record, dict) and isinstance(changes, dict):
        return {**record, **changes}
    return changes


def _update(items: Any, *how: Any) -> list[Any]:
    """update(cart, 2, {'qty': 3}): the second item with these fields changed (or replaced, if
    the change is not a record); update(cart, 'sku', 'A1', {'qty': 3}): every record whose sku
    is A1. A position past the end leaves the list as it is."""
    found = _list(items, "update")
    if len(how) == 2:
        index = _position(found, how[0], "update")
        if index is None:
            return found
        return [_merge(i, how[1]) if n == index else i for n, i in enumerate(found)]
    if len(how) == 3:
        return [_merge(i, how[2]) if _matches(i, how[0], how[1]) else i for i in found]
    raise ExprError("update(list, position, change) or update(list, field, value, change)")


def _format_date(value: Any, pattern: Any = "%a %d %b %Y, %H:%M") -> str:
    """A date, time or date and time as typed answers keep them (ISO text: "2026-12-08",
    "17:00", "2026-12-08T17:00+05:30") written for a customer: format_date(at, "%d %B at %H:%M")
    gives "08 December at 17:00" (Python's strftime codes; English names)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not isinstance(pattern, str) or len(pattern) > 100:
        raise ExprError(f"format_date needs a date as text and a pattern, got {_show(value)}")
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value):
            moment = datetime.strptime(value[:5], "%H:%M")
        else:
            moment = datetime.fromisoformat(value)
        return moment.strftime(pattern)
    except ValueError as e:
        raise ExprError(f"format_date: {value[:40]!r} is not a date or time ({e})") from None


def _default(value: Any, fallback: Any) -> Any:
    return fallback if value is None or value == "" else value


def _int(value: Any) -> int:
    return int(_num(value, "int"))


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": _len,
    "sum": _sum,
    "min": _min,
    "max": _max,
    "abs": lambda x: abs(_num(x, "abs")),
    "round": _round,
    "int": _int,
    "number": number,
    "money": money,
    "text": _text,
    "lower": _str_fn("lower", str.lower),
    "upper": _str_fn("upper", str.upper),
    "trim": _str_fn("trim", str.strip),
    "default": _default,
    "join": _join,
    "find": _find,
    "where": _where,
    "remove": _remove,
    "update": _update,
    "merge": _merge,
    "format_date": _format_date,
}


# --- reading ---------------------------------------------------------------------------------

_ALLOWED = (
    ast.Expression,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Name,
    ast.Constant,
    ast.Attribute,
    ast.Subscript,
    ast.Slice,
    ast.List,
    ast.Tuple,
    ast.Dict,
    ast.ListComp,
    ast.comprehension,
    ast.Load,
    ast.Store,
    ast.And,
    ast.Or,
    *OPERATORS,
)


def parse(source: str) -> Expr:
    """Read an expression; raise ExprError saying what is wrong with it."""
    text = source.strip()
    if not text:
        raise ExprError("an empty expression")
    if len(text) > MAX_SOURCE:
        raise ExprError(f"an expression longer than {MAX_SOURCE} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ExprError(f"not an expression: {e.msg}") from None
    tree = _Constants().visit(tree)
    bound: set[str] = set()
    free: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExprError(f"{_describe(node)} is not allowed in an expression")
        if isinstance(node, ast.Constant):
            _constant(node, text)
        elif isinstance(node, ast.Call):
            _call(node)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            raise ExprError(f"a field cannot start with '_' ({node.attr})")
        elif isinstance(node, ast.comprehension):
            bound.update(_targets(node.target))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            free.add(node.id)
    return Expr(text, tree.body, frozenset(free - bound - set(FUNCTIONS)))


class _Constants(ast.NodeTransformer):
    """true, false and none, as YAML writes them, are the constants True, False and None."""

    NAMES = {"true": True, "false": False, "none": None, "null": None}  # noqa: RUF012

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self.NAMES and isinstance(node.ctx, ast.Load):
            return ast.copy_location(ast.Constant(self.NAMES[node.id]), node)
        return node


@functools.lru_cache(maxsize=4096)
def parse_cached(source: str) -> Expr:
    """parse(), remembered: templates' {= ...} expressions are parsed once, at first use."""
    return parse(source)


def _constant(node: ast.Constant, text: str) -> None:
    value = node.value
    if isinstance(value, float):
        literal = ast.get_source_segment(text, node) or repr(value)
        node.value = Decimal(literal.replace("_", ""))  # type: ignore[assignment]
    elif not (value is None or isinstance(value, str | int | bool)):
        raise ExprError(f"{type(value).__name__} literals are not allowed")


def _call(node: ast.Call) -> None:
    if not isinstance(node.func, ast.Name):
        raise ExprError("only the listed functions can be called (no methods)")
    if node.func.id not in FUNCTIONS:
        raise ExprError(f"unknown function {node.func.id!r}; use one of {', '.join(FUNCTIONS)}")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise ExprError(f"{node.func.id}: give arguments by position")


def _targets(target: ast.expr) -> Iterable[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for t in target.elts:
            yield from _targets(t)
    else:
        raise ExprError("a loop variable must be a name")


def _describe(node: ast.AST) -> str:
    names = {
        ast.Lambda: "lambda",
        ast.NamedExpr: "':='",
        ast.GeneratorExp: "a generator",
        ast.SetComp: "a set comprehension",
        ast.DictComp: "a record comprehension",
        ast.Set: "a set",
        ast.Starred: "'*'",
        ast.JoinedStr: "an f-string",
        ast.Await: "await",
    }
    return names.get(type(node), type(node).__name__)


# --- evaluating ------------------------------------------------------------------------------


class _Sandbox(EvalWithCompoundTypes):  # type: ignore[misc]
    """simpleeval with our operators and functions; records are read by key, nothing else."""

    def __init__(self) -> None:
        super().__init__(operators=dict(OPERATORS), functions=dict(FUNCTIONS), names={})

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        record = self._eval(node.value)
        if isinstance(record, dict):
            return record.get(node.attr)
        if record is None:
            return None
        raise ExprError(f".{node.attr}: {_show(record)} has no fields")

    def _eval_name(self, node: ast.Name) -> Any:
        return self.names.get(node.id)  # a slot not set yet reads as None


class Evaluator:
    """Evaluates parsed expressions. One per flow: evaluation is synchronous, so conversations
    stepping the shared machine never share it at the same time."""

    def __init__(self) -> None:
        self._sandbox = _Sandbox()

    def __call__(self, expr: Expr, names: Mapping[str, Value]) -> Value:
        self._sandbox.names = names
        try:
            value: Value = self._sandbox.eval(expr.source, previously_parsed=expr.tree)
        except ExprError:
            raise
        except (DivisionByZero, ZeroDivisionError):
            raise ExprError("division by zero") from None
        except (InvalidOperation, ArithmeticError) as e:
            raise ExprError(f"arithmetic: {type(e).__name__}") from None
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise ExprError(f"{type(e).__name__}: {e}") from None
        except Exception as e:  # simpleeval's own refusals
            raise ExprError(str(e)) from None
        finally:
            self._sandbox.names = {}
        if isinstance(value, float):  # no path gives one, but money must never be a float
            value = Decimal(str(value))
        return value

    def test(self, expr: Expr, names: Mapping[str, Value]) -> bool:
        return bool(self(expr, names))
