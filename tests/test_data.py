"""Data files beside a flow: tables read as records with Decimal numbers, menus built from
them in pages and sections, a row picked by tap or by its title, and every mistake at its
file:line."""

from __future__ import annotations

import textwrap
from decimal import Decimal as D
from pathlib import Path

from engine.events import ListReply
from engine.flows import Flow, load_flows, validate_path
from engine.flows.reader import read_flow
from engine.outbound import ListMessage, TextMessage
from tests.test_flow_runtime import Convo, msg

SHOP = """
data:
  menu: data/menu.csv
  shop: data/shop.yaml
slots: {cart: "=[]"}
start: pick
states:
  pick:
    say:
      text: "{= shop.name}: {= len(menu)} pizzas."
      list:
        button: Menu
        rows:
          from: menu
          id: "{sku}"
          title: "{name}"
          description: "{= money(price * (1 + shop.tax))}"
          section: "{category}"
    on:
      - type: choice
        from: menu
        save: item
        set: {cart: "= cart + [item]"}
        go: review
  review:
    say:
      text: "{= len(cart)} in the cart. Tap one to take it out."
      list:
        button: Cart
        rows: {from: "=cart", id: "{sku}", title: "{name}"}
    on:
      - type: choice
        from: "=cart"
        save: out
        set: {cart: "= remove(cart, 'sku', out.sku)"}
        go: review
      - text: more
        go: pick
"""
SHOP_YAML = """
name: Luigi's
tax: 0.10
phone: "0031 20 555"
code: 00123
"""


def menu_csv(count: int) -> str:
    lines = ["sku,name,price,category"]
    for i in range(1, count + 1):
        lines.append(f"P{i:02d},Pizza {i},{8 + i},{'Classic' if i <= 12 else 'Special'}")
    return "\n".join(lines) + "\n"


def folder(tmp: Path, shop: str = SHOP, menu: str | None = None, extra: str = SHOP_YAML) -> Path:
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    (tmp / "shop.yaml").write_text(textwrap.dedent(shop).lstrip("\n"))
    (tmp / "data" / "menu.csv").write_text(menu if menu is not None else menu_csv(23))
    (tmp / "data" / "shop.yaml").write_text(textwrap.dedent(extra).lstrip("\n"))
    return tmp


def flow_of(tmp: Path, **kwargs: str) -> Flow:
    return load_flows(folder(tmp, **kwargs), "shop").entry_flow


def rows_of(message: object) -> list[list[str]]:
    assert isinstance(message, ListMessage)
    return [[f"{s.title}:"] + [r.id for r in s.rows] for s in message.sections]


def test_tables_hold_records_with_decimal_numbers_and_text_that_keeps_its_form(
    tmp_path: Path,
) -> None:
    data = flow_of(tmp_path).spec.data
    assert data["menu"][0] == {
        "sku": "P01",
        "name": "Pizza 1",
        "price": D(9),
        "category": "Classic",
    }  # type: ignore[index]
    assert data["shop"] == {
        "name": "Luigi's",
        "tax": D("0.10"),
        "phone": "0031 20 555",
        "code": "00123",
    }


def test_a_menu_of_23_is_shown_in_pages_with_a_row_for_the_next(tmp_path: Path) -> None:
    flow = flow_of(tmp_path)
    c = Convo()
    (first,) = flow.start(c).messages
    assert isinstance(first, ListMessage) and first.body == "Luigi's: 23 pizzas."
    assert rows_of(first) == [
        ["Classic:", *(f"P{i:02d}" for i in range(1, 10))],
        ["More:", "_more1"],
    ]
    assert first.sections[0].rows[0].description == "9.90"  # 9 x 1.10, in Decimal
    assert first.sections[1].rows[0].description == "14 more"
    (second,) = flow.handle(c, msg(ListReply("_more1", "More"))).messages
    assert rows_of(second) == [
        ["Classic:", "P10", "P11", "P12"],
        ["Special:", *(f"P{i:02d}" for i in range(13, 19))],
        ["More:", "_more2"],
    ]
    again = flow.handle(c, msg(ListReply("_more1", "More"))).messages  # the old list's row
    assert rows_of(again[0]) == rows_of(second)  # the same page again, not the next
    (third,) = flow.handle(c, msg(ListReply("_more2", "More"))).messages
    assert rows_of(third) == [["Special:", *(f"P{i:02d}" for i in range(19, 24))]]
    assert c.state == "pick" and c.misses == 0
    # A row of an earlier page still counts: the whole table is the choice.
    (review,) = flow.handle(c, msg(ListReply("P02", "Pizza 2"))).messages
    assert c.slots["cart"] == [
        {"sku": "P02", "name": "Pizza 2", "price": D(10), "category": "Classic"}
    ]
    assert rows_of(review) == [["None:", "P02"]]
    assert "_page" not in c.slots  # a new step starts on the first page


def test_a_row_is_picked_by_its_title_too_and_a_list_can_be_emptied(tmp_path: Path) -> None:
    flow = flow_of(tmp_path, menu=menu_csv(4))
    c = Convo()
    (first,) = flow.start(c).messages
    assert rows_of(first) == [["Classic:", "P01", "P02", "P03", "P04"]]  # no page needed
    flow.handle(c, msg("pizza 3"))
    assert [i["sku"] for i in c.slots["cart"]] == ["P03"]  # type: ignore[index]
    (empty,) = flow.handle(c, msg(ListReply("P03", "Pizza 3"))).messages
    assert isinstance(empty, TextMessage)  # no rows to show: WhatsApp refuses an empty list
    assert empty.body == "0 in the cart. Tap one to take it out."
    flow.handle(c, msg("pizza 3"))  # not a row of this step's list now
    assert c.misses == 1


def test_changing_a_data_file_changes_the_flow_version(tmp_path: Path) -> None:
    before = flow_of(tmp_path).version
    assert flow_of(tmp_path, menu=menu_csv(5)).version != before


def test_data_mistakes_are_reported_at_their_line(tmp_path: Path) -> None:
    shop = SHOP.replace("data/shop.yaml", "data/nothing.yaml").replace(
        'title: "{name}"\n          description', 'title: "{nme}"\n          description'
    )
    shop = shop.replace('slots: {cart: "=[]"}', 'slots: {cart: "=[]", menu: x}')
    shop = shop.replace('        from: "=cart"\n', "        from: cart\n")
    bad_csv = "sku,name,price,name\nP1,Pizza,9\n"
    found = [
        (Path(p.file).name, p.line, p.message)
        for p in validate_path(folder(tmp_path, shop=shop, menu=bad_csv))
    ]
    assert ("shop.yaml", 3, "data: cannot read 'data/nothing.yaml': FileNotFoundError") in found
    assert ("menu.csv", 1, "CSV header: 'name' names two columns") in found
    assert ("menu.csv", 2, "CSV: 3 values for 4 columns") in found
    assert len([f for f in found if f[0] == "menu.csv"]) == 2, found


def test_names_in_rows_are_checked_against_the_tables_fields(tmp_path: Path) -> None:
    shop = SHOP.replace(
        'title: "{name}"\n          description', 'title: "{nme}"\n          description'
    )
    shop = shop.replace('slots: {cart: "=[]"}', 'slots: {cart: "=[]", menu: x}')
    shop = shop.replace('        from: "=cart"\n        save', "        from: menu\n        save")
    found = {(p.line, p.message) for p in validate_path(folder(tmp_path, shop=shop))}
    assert (4, "'menu' is a data table of this flow; a slot needs another name") in found
    assert (
        15,
        "unknown field 'nme' (did you mean 'name'?): the records have category, name, price, sku",
    ) in found
    assert (
        31,
        "type: choice from 'menu': state 'review' shows no list rows from it"
        " (it shows rows from: =cart)",
    ) in found
    assert len(found) == 3, found


def test_rows_from_what_is_not_a_table(tmp_path: Path) -> None:
    shop = """
    data: {shop: data/shop.yaml, menu: data/menu.txt}
    start: a
    states:
      a:
        say:
          text: Pick
          list:
            rows: {from: shop, title: "{name}"}
        on:
          - type: choice
            save: x
            go: a
          - text: x
            from: shop
            go: a
    """
    path = folder(tmp_path, shop=shop) / "shop.yaml"
    _spec, problems = read_flow(path)
    found = {(p.line, p.message) for p in problems}
    assert (1, "data: menu: a .yaml or .csv file beside the flow, like data/menu.csv") in found
    assert (8, "rows from 'shop': the table is not a list of records") in found
    assert (10, "type: choice needs from: (the data table or list of the rows)") in found
    assert (14, "from: belongs to a branch with type: choice") in found


def test_a_field_of_a_data_record_is_checked_and_a_function_name_is_no_data_name(
    tmp_path: Path,
) -> None:
    shop = SHOP.replace("{= shop.name}", "{= shop.nmae}").replace(
        "  shop: data/shop.yaml\n", "  shop: data/shop.yaml\n  len: data/shop.yaml\n"
    )
    found = {(p.line, p.message) for p in validate_path(folder(tmp_path, shop=shop))}
    assert (
        4,
        "data name 'len': a name of letters, digits and '_' that is not name, text, phone or a"
        " function",
    ) in found
    assert (
        10,
        "shop.nmae: the data 'shop' has no field 'nmae' (did you mean 'name'?) (it has code, name,"
        " phone, tax)",
    ) in found


def test_an_unclosed_quote_in_a_csv_is_reported_where_its_record_starts(tmp_path: Path) -> None:
    menu = 'sku,name,price,category\nP1,Pizza,9,A\nP2,"Pasta,8,A\nP3,Cola,2,A\n'
    found = [
        (Path(p.file).name, p.line, p.message) for p in validate_path(folder(tmp_path, menu=menu))
    ]
    assert found == [
        (
            "menu.csv",
            3,
            "CSV: unexpected end of data (a quote opened in this record is never closed?)",
        )
    ], found  # and nothing else: the rows built from it are not checked against a broken table


def test_a_data_file_that_is_not_utf8_names_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    menu = "sku,name,price,category\nP1,Pizza,9,A\nP2,Caf\xe9,2,A\n".encode("latin-1")
    root = folder(tmp_path)
    (root / "data" / "menu.csv").write_bytes(menu)
    found = [(Path(p.file).name, p.line, p.message) for p in validate_path(root)]
    assert found == [("menu.csv", 3, "not UTF-8 text: byte 0xe9 (save the file as UTF-8)")], found
