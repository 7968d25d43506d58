"""Data files beside a flow: tables (YAML or CSV) that expressions read and lists are built from.

    data:
      menu: data/menu.csv          # a list of records, one per row, the header naming fields
      shop: data/shop.yaml         # any YAML: a list, a record, a text

A data file is read and checked with its flow (a problem is a `file:line` like any other) and
is part of the flow's version, so changing it is a reload like changing the flow. In both
formats a value written as a plain decimal number ("9.50", "120") is a number (Decimal); one
quoted in YAML, or with leading zeros, a sign or an exponent ("00123", "+1555"), stays text.
"""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path
from typing import Any

from .expr import FUNCTIONS
from .reading import Reading
from .source import NUMBER, SourceError, YList, YMap, decode
from .spec import SLOT
from .text import BUILTIN_VALUES
from .values import Value

MAX_BYTES = 5 * 1024 * 1024  # one data file
MAX_ROWS = 10_000  # records in one table
SUFFIXES = (".yaml", ".yml", ".csv")


def read_data(r: Reading, folder: Path, doc: YMap) -> tuple[dict[str, Value], str]:
    """The flow's data: tables by name, and their text (for the flow's version)."""
    raw = doc.get("data")
    if raw is None:
        return {}, ""
    if not isinstance(raw, YMap) or not raw:
        r.err(doc.line_of("data"), "data: a mapping of names to files, like {menu: data/menu.csv}")
        return {}, ""
    tables: dict[str, Value] = {}
    texts: list[str] = []
    for name, ref in raw.items():
        line = raw.line_of(name)
        if not SLOT.fullmatch(name) or name in BUILTIN_VALUES or name in FUNCTIONS:
            r.err(
                line,
                f"data name {name!r}: a name of letters, digits and '_' that is not name, text,"
                " phone or a function",
            )
            continue
        r.broken.add(name)  # until it is read: its uses are not checked against it
        if not isinstance(ref, str) or Path(ref).suffix.lower() not in SUFFIXES:
            r.err(line, f"data: {name}: a .yaml or .csv file beside the flow, like data/{name}.csv")
            continue
        path = folder / ref
        try:
            if path.stat().st_size > MAX_BYTES:
                r.err(line, f"data: {ref!r} is over {MAX_BYTES // (1024 * 1024)} MiB")
                continue
            raw_bytes = path.read_bytes()
        except OSError as e:
            r.err(line, f"data: cannot read {ref!r}: {e.__class__.__name__}")
            continue
        file = str(path)
        text = decoded(r, raw_bytes, file)
        if text is None:
            continue
        table = _csv(r, text, file) if path.suffix.lower() == ".csv" else _yaml(r, text, file)
        if table is not None:
            tables[name] = table
            texts.append(text)
            r.broken.discard(name)
    r.data = (set(raw) & set(tables)) | r.broken
    r.fields = {n: _fields(v) for n, v in tables.items()}
    return tables, "\0".join(texts)


def decoded(r: Reading, data: bytes, file: str) -> str | None:
    try:
        return decode(data)
    except SourceError as e:
        r.err(e.line, e.message, file)
        return None


def _yaml(r: Reading, text: str, file: str) -> Value | None:
    before = len(r.problems)
    doc = r.yaml(text, file, numbers=True)
    if doc is None:
        if len(r.problems) == before:
            r.err(1, "the data file is empty", file)
        return None
    if isinstance(doc, YList) and len(doc) > MAX_ROWS:
        r.err(doc.line, f"{len(doc)} records: a table holds at most {MAX_ROWS}", file)
        return None
    return plain(doc)


def _csv(r: Reading, text: str, file: str) -> Value | None:
    """A header row naming the fields, then one record per row."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[list[str]] = []
    starts: list[int] = []  # the line each record starts on (a quoted value may span lines)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # an unclosed quote: reported where the record starts
            r.err(start, f"CSV: {e} (a quote opened in this record is never closed?)", file)
            return None
        rows.append(row)
        starts.append(start)
    if not rows or not any(c.strip() for c in rows[0]):
        r.err(1, "a CSV data file starts with a header row naming its fields", file)
        return None
    header = [c.strip() for c in rows[0]]
    ok = True
    for i, field in enumerate(header):
        if not SLOT.fullmatch(field):
            r.err(1, f"CSV header: column {i + 1} {field!r} is not a field name", file)
            ok = False
        elif header.index(field) != i:
            r.err(1, f"CSV header: {field!r} names two columns", file)
            ok = False
    if len(rows) - 1 > MAX_ROWS:
        r.err(1, f"{len(rows) - 1} rows: a table holds at most {MAX_ROWS}", file)
        return None
    records: list[Value] = []
    for number, row in zip(starts[1:], rows[1:], strict=True):
        if not any(c.strip() for c in row):
            continue  # a blank line
        if len(row) != len(header):
            r.err(number, f"CSV: {len(row)} values for {len(header)} columns", file)
            ok = False
            continue
        records.append({f: _cell(c) for f, c in zip(header, row, strict=True)})
    return records if ok else None


def _cell(text: str) -> Value:
    value = text.strip()
    if not value:
        return None
    return Decimal(value) if NUMBER.fullmatch(value) else value


def plain(value: Any) -> Value:
    """YMap/YList as plain records and lists (the values slots hold)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value  # type: ignore[no-any-return]


def _fields(table: Value) -> frozenset[str] | None:
    """The fields the records of a table have (None: not a table of records)."""
    if isinstance(table, list) and table and all(isinstance(v, dict) for v in table):
        return frozenset(k for record in table if isinstance(record, dict) for k in record)
    return None
