"""Reading what a flow says: texts, buttons and lists, checked against WhatsApp's limits.

Texts are templates (`{slot}`, `{slot|default}`); their static length is checked against the
limit of where they appear, and the names they use are noted for the whole-flow check.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import regex

from ..outbound import LIMITS, MEDIA_KINDS
from .reading import Reading
from .source import YList, YMap
from .spec import Rows, Say, TemplateUse, slug
from .text import expressions, placeholders, static_length, stray_brace


def says(r: Reading, parent: YMap, key: str) -> tuple[Say, ...]:
    if key not in parent:
        return ()
    return say_items(r, parent[key], parent.line_of(key))


def say_items(r: Reading, raw: Any, line: int) -> tuple[Say, ...]:
    if isinstance(raw, YList):
        found = [message(r, v, raw.line_of(i)) for i, v in enumerate(raw)]
        return tuple(s for s in found if s is not None)
    one = message(r, raw, line)
    return (one,) if one is not None else ()


def message(r: Reading, raw: Any, line: int) -> Say | None:
    if isinstance(raw, str):
        template(r, raw, line, LIMITS["text"], "text")
        return Say(line, "text", raw)
    if not isinstance(raw, YMap):
        r.err(line, "say: text, or a mapping with text: and buttons: or list:")
        return None
    line = raw.line
    r.keys(raw, MESSAGE_KEYS, "message")
    use = template_use(r, raw["template"], raw.line_of("template")) if "template" in raw else None
    quote = raw.get("quote") is True
    if "quote" in raw and not isinstance(raw["quote"], bool):
        r.err(raw.line_of("quote"), "quote: true or false")
    if any(k in raw for k in OTHER_KINDS):
        other = other_kind(r, raw, line, use)
        return replace(other, quote=quote) if other is not None else None
    for key in ("caption", "filename"):
        if key in raw:
            r.err(raw.line_of(key), f"{key}: goes with image:, document:, video: or audio:")
    if "template" in raw and "text" not in raw:
        for key in ("buttons", "list", "header", "footer"):
            if key in raw:
                r.err(raw.line_of(key), f"{key}: needs text: (a template brings its own)")
        return Say(line, "template", use.template.body if use else "", template=use)
    found = free_form(r, raw, line)
    if found is None:
        return found
    return replace(found, template=use, quote=quote)


OTHER_KINDS = (*MEDIA_KINDS, "location", "react")
MESSAGE_KEYS = (
    "text",
    "buttons",
    "list",
    "header",
    "footer",
    "template",
    "quote",
    *MEDIA_KINDS,
    "caption",
    "filename",
    "location",
    "react",
)


def other_kind(r: Reading, raw: YMap, line: int, use: TemplateUse | None) -> Say | None:
    """A media, location or reaction message (None: it has errors, reported)."""
    kinds = [k for k in OTHER_KINDS if k in raw]
    if len(kinds) > 1 or "text" in raw or "buttons" in raw or "list" in raw:
        r.err(line, f"one kind of message each: {', '.join(kinds)} (and text: goes alone)")
        return None
    kind = kinds[0]
    if kind in MEDIA_KINDS:
        return media(r, raw, line, kind, use)
    if kind == "react":
        emoji = raw.get("react")
        if not isinstance(emoji, str):
            r.err(raw.line_of("react"), "react: one emoji (or '' to take a reaction back)")
            return None
        if emoji and "{" not in emoji and not _one_emoji(emoji):
            r.err(raw.line_of("react"), f"react: one emoji, not {emoji[:20]!r}")
        return Say(line, "reaction", emoji, template=use)
    return location(r, raw, line, use)


def media(r: Reading, raw: YMap, line: int, kind: str, use: TemplateUse | None) -> Say:
    """image:, document:, video: or audio: a link, a media id or a file in MEDIA_DIR."""
    source = r.scalar(raw, kind, required=True) or ""
    template(r, source, raw.line_of(kind), 2048, f"{kind} (a link, a media id or a file)")
    caption = r.scalar(raw, "caption")
    if caption is not None:
        if kind == "audio":
            r.err(raw.line_of("caption"), "audio takes no caption")
        template(r, caption, raw.line_of("caption"), LIMITS["caption"], "caption")
    filename = r.scalar(raw, "filename")
    if filename is not None:
        if kind != "document":
            r.err(raw.line_of("filename"), "filename: goes with document:")
        template(r, filename, raw.line_of("filename"), 240, "filename")
    return Say(line, "media", caption or "", media=(kind, source, filename), template=use)


def location(r: Reading, raw: YMap, line: int, use: TemplateUse | None) -> Say | None:
    place = raw["location"]
    if not isinstance(place, YMap):
        r.err(raw.line_of("location"), "location: {latitude: ..., longitude: ..., name: ...}")
        return None
    r.keys(place, ("latitude", "longitude", "name", "address"), "location")
    values = [
        r.scalar(place, k, required=k in ("latitude", "longitude"))
        for k in ("latitude", "longitude", "name", "address")
    ]
    for key, value in zip(("latitude", "longitude", "name", "address"), values, strict=True):
        if value is not None:
            template(r, value, place.line_of(key), LIMITS["location_name"], key)
    lat, lon, name, address = values
    for key, value, bound in (("latitude", lat, 90), ("longitude", lon, 180)):
        if value is not None and "{" not in value and not _degrees(value, bound):
            r.err(place.line_of(key), f"{key}: decimal degrees from -{bound} to {bound}")
    return Say(line, "location", "", location=(lat or "", lon or "", name, address), template=use)


def free_form(r: Reading, raw: YMap, line: int) -> Say | None:
    body = r.scalar(raw, "text", required=True) or ""
    if "buttons" in raw and "list" in raw:
        r.err(line, "a message has buttons: or list:, not both")
        return None
    header = r.scalar(raw, "header")
    footer = r.scalar(raw, "footer")
    for key, value in (("header", header), ("footer", footer)):
        if value is not None:
            template(r, value, raw.line_of(key), LIMITS[key], key)
    if "buttons" in raw:
        template(r, body, raw.line_of("text"), LIMITS["button_body"], "text with buttons")
        options = buttons(r, raw)
        return Say(line, "buttons", body, buttons=options, header=header, footer=footer)
    if "list" in raw:
        template(r, body, raw.line_of("text"), LIMITS["list_body"], "text of a list")
        spec = raw["list"]
        if isinstance(spec, YMap) and isinstance(spec.get("rows"), YMap):
            button = r.scalar(spec, "button") or "Options"
            template(r, button, spec.line_of("button"), LIMITS["list_button"], "list button")
            r.keys(spec, ("button", "rows"), "list")
            return Say(
                line,
                "list",
                body,
                list_button=button,
                header=header,
                footer=footer,
                rows=built_rows(r, spec["rows"]),
            )
        button, sections = list_(r, raw)
        return Say(
            line,
            "list",
            body,
            list_button=button,
            sections=sections,
            header=header,
            footer=footer,
        )
    if header is not None or footer is not None:
        r.err(line, "header: and footer: need buttons: or list:")
    template(r, body, raw.line_of("text"), LIMITS["text"], "text")
    return Say(line, "text", body)


def buttons(r: Reading, raw: YMap) -> tuple[tuple[str, str], ...]:
    items = raw["buttons"]
    line = raw.line_of("buttons")
    if not isinstance(items, YList) or not items:
        r.err(line, "buttons: a list of 1 to 3 buttons")
        return ()
    if len(items) > LIMITS["buttons"]:
        r.err(
            line,
            f"{len(items)} buttons: WhatsApp allows at most {LIMITS['buttons']}"
            " (use list: for more)",
        )
    out = [option(r, item, items.line_of(i), "button") for i, item in enumerate(items)]
    found = tuple((i, t) for i, t, _d in (o for o in out if o is not None))
    unique(r, found, line, "button")
    return found


def list_(
    r: Reading, raw: YMap
) -> tuple[str, tuple[tuple[str | None, tuple[tuple[str, str, str | None], ...]], ...]]:
    spec = raw["list"]
    line = raw.line_of("list")
    if not isinstance(spec, YMap):
        r.err(line, "list: a mapping with button: and rows: (or sections:)")
        return "", ()
    r.keys(spec, ("button", "rows", "sections"), "list")
    button = r.scalar(spec, "button") or "Options"
    template(r, button, spec.line_of("button"), LIMITS["list_button"], "list button")
    sections: list[tuple[str | None, tuple[tuple[str, str, str | None], ...]]] = []
    if "rows" in spec and "sections" in spec:
        r.err(line, "list: rows: or sections:, not both")
    elif "rows" in spec:
        sections.append((None, rows(r, spec, "rows")))
    elif isinstance(spec.get("sections"), YList):
        secs = spec["sections"]
        if len(secs) > LIMITS["list_sections"]:
            r.err(
                spec.line_of("sections"),
                f"{len(secs)} sections: at most {LIMITS['list_sections']}",
            )
        for i, sec in enumerate(secs):
            if not isinstance(sec, YMap):
                r.err(secs.line_of(i), "a section is a mapping with title: and rows:")
                continue
            r.keys(sec, ("title", "rows"), "section")
            title = r.scalar(sec, "title")
            if title is not None:
                template(r, title, sec.line_of("title"), LIMITS["section_title"], "section title")
            elif len(secs) > 1:
                r.err(secs.line_of(i), "section: needs a title: when a list has several sections")
            sections.append((title, rows(r, sec, "rows")))
    else:
        r.err(line, "list: needs rows: or sections:")
    total = sum(len(rows) for _t, rows in sections)
    if total > LIMITS["list_rows"]:
        r.err(line, f"{total} list rows: WhatsApp allows at most {LIMITS['list_rows']} in all")
    unique(r, tuple((row[0], row[1]) for _t, rows in sections for row in rows), line, "row")
    return button, tuple(sections)


ROWS_KEYS = ("from", "id", "title", "description", "section", "more")
ROW_NAMES = frozenset({"item", "index"})  # what a built row's templates know besides fields


def built_rows(r: Reading, raw: YMap) -> Rows | None:
    """rows: {from: menu, id: "{sku}", title: "{name}", description: ..., section: ...}: a
    row for each item of a data table (or of an expression's list), built when it is said."""
    r.keys(raw, ROWS_KEYS, "rows")
    source = r.scalar(raw, "from", required=True)
    title = r.scalar(raw, "title", required=True)
    if source is None or title is None:
        return None
    line = raw.line_of("from")
    if source.lstrip().startswith("="):
        items = r.expression(source.lstrip()[1:], line)
        fields = None  # what an expression's items hold is known at run time only
    else:
        if source not in r.data:
            known = ", ".join(sorted(r.data)) or "none"
            r.err(line, f"rows from {source!r}: not a data table of this flow (data: {known})")
            return None
        items = r.expression(source, line)
        fields = r.fields.get(source)
        if source in r.broken:
            return None  # the table's own problems are reported
        if fields is None:
            r.err(line, f"rows from {source!r}: the table is not a list of records")
            return None
    if items is None:
        return None
    ident = r.scalar(raw, "id") or title
    desc = r.scalar(raw, "description")
    section = r.scalar(raw, "section")
    more = r.scalar(raw, "more") or "More"
    used, exprs = len(r.used), len(r.exprs)
    template(r, ident, raw.line_of("id"), LIMITS["row_id"], "row id")
    template(r, title, raw.line_of("title"), LIMITS["row_title"], "row title")
    if desc is not None:
        template(r, desc, raw.line_of("description"), LIMITS["row_description"], "description")
    if section is not None:
        template(r, section, raw.line_of("section"), LIMITS["section_title"], "section title")
    names = {n for _l, _f, n in r.used[used:]} | {
        n for _l, _f, e in r.exprs[exprs:] for n in e.names
    }
    static = fields is not None and names <= fields | ROW_NAMES | r.data
    r.scoped.append((fields, r.used[used:], r.exprs[exprs:]))
    del r.used[used:], r.exprs[exprs:]
    template(r, more, raw.line_of("more"), LIMITS["row_title"], "more row title")
    return Rows(raw.line, source, items, ident, title, desc, section, more, static)


def rows(r: Reading, parent: YMap, key: str) -> tuple[tuple[str, str, str | None], ...]:
    items = parent.get(key)
    if not isinstance(items, YList) or not items:
        r.err(parent.line_of(key), f"{key}: a non-empty list of rows")
        return ()
    out = [option(r, item, items.line_of(i), "row") for i, item in enumerate(items)]
    return tuple(o for o in out if o is not None)


def option(r: Reading, item: Any, line: int, what: str) -> tuple[str, str, str | None] | None:
    """A button or list row: 'Title' (id derived) or {id:, title:, description:}."""
    title_limit = LIMITS["button_title" if what == "button" else "row_title"]
    id_limit = LIMITS["button_id" if what == "button" else "row_id"]
    if isinstance(item, str):
        title, ident, desc = item, slug(item), None
    elif isinstance(item, YMap):
        r.keys(item, ("id", "title", "description") if what == "row" else ("id", "title"), what)
        title = r.scalar(item, "title", required=True) or ""
        ident = r.scalar(item, "id") or slug(title)
        desc = r.scalar(item, "description")
        if desc is not None:
            template(
                r, desc, item.line_of("description"), LIMITS["row_description"], "row description"
            )
    else:
        r.err(line, f"a {what} is a title, or a mapping with id: and title:")
        return None
    if not ident:
        r.err(line, f"{what} {title!r} needs an id: (its title has no letters or digits)")
    elif len(ident) > id_limit:
        r.err(line, f"{what} id longer than {id_limit} characters")
    template(r, title, line, title_limit, f"{what} title")
    return ident, title, desc


def unique(r: Reading, options: tuple[tuple[str, str], ...], line: int, what: str) -> None:
    ids = [i for i, _t in options]
    titles = [t for _i, t in options]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        r.err(line, f"{what} id {dup!r} is used twice in one message")
    for dup in sorted({t for t in titles if titles.count(t) > 1}):
        r.err(line, f"{what} title {dup!r} is used twice in one message")


def template(
    r: Reading, text: str, line: int, limit: int, what: str, *, file: str | None = None
) -> None:
    names = placeholders(text)
    for name in names:
        r.used.append((line, file or r.file, name))
    computed = expressions(text)
    for source in computed:
        r.expression(source, line, file=file)
    if stray_brace(text):
        r.err(
            line,
            f"{what}: stray brace; write {{{{ or }}}} for a literal brace,"
            " {slot} or {slot|default} for a value, {= expression} for a computed one",
            file,
        )
    size = static_length(text)
    if size > limit:
        r.err(line, f"{what} is {size} characters; WhatsApp allows {limit}", file)
    elif not names and not computed and not text.strip():
        r.err(line, f"{what} is empty", file)


def template_use(r: Reading, raw: Any, line: int) -> TemplateUse | None:
    """template: {name: cart_reminder, params: [...] or {...}, header: ..., buttons: [...]}:
    checked against templates.yaml, so a use that Meta would refuse (132000) fails here."""
    if isinstance(raw, str):
        raw_map: dict[str, Any] = {"name": raw}
    elif isinstance(raw, YMap):
        r.keys(raw, ("name", "params", "header", "buttons"), "template")
        raw_map = raw
        line = raw.line
    else:
        r.err(line, "template: a name, or {name: ..., params: ...}")
        return None
    name = raw_map.get("name")
    if not isinstance(name, str):
        r.err(line, "template: needs name:")
        return None
    known = r.templates.get(name)
    if known is None:
        declared = ", ".join(sorted(r.templates)) or "none: add templates.yaml beside the flows"
        r.err(
            line,
            f"template {name!r} is not in templates.yaml{r.hint(name, r.templates)}"
            f" (declared: {declared})",
        )
        return None
    values = _values(raw_map.get("params"))
    if values is None:
        r.err(line, "params: a list of texts ({{1}}, {{2}} ...) or a mapping of names to texts")
        return None
    header = raw_map.get("header")
    if header is not None and not isinstance(header, str):
        r.err(line, "header: a text (a link or media id for a media header)")
        return None
    buttons = raw_map.get("buttons")
    if buttons is not None and not (
        isinstance(buttons, YList) and all(isinstance(v, str) for v in buttons)
    ):
        r.err(line, "buttons: a list of texts, one per button that takes a value")
        return None
    problem = known.mismatch(values, header, buttons)
    if problem:
        r.err(line, problem)
        return None
    texts = list(values.values()) if isinstance(values, dict) else values
    for text in [*texts, *(buttons or ()), *([header] if header else [])]:
        template(r, text, line, 1024, "template value")
    return TemplateUse(
        line,
        known,
        params=tuple(values) if isinstance(values, list) else (),
        named=tuple(values.items()) if isinstance(values, dict) else (),
        header=header,
        buttons=tuple(buttons or ()),
    )


def _values(params: Any) -> list[str] | dict[str, str] | None:
    if params is None:
        return []
    if isinstance(params, YList) and all(isinstance(v, str) for v in params):
        return list(params)
    if isinstance(params, YMap) and all(isinstance(v, str) for v in params.values()):
        return dict(params)
    return None


def _one_emoji(text: str) -> bool:
    """One grapheme (👍, 👍🏽, 🇮🇳, 👨‍👩‍👧) that is not a letter, digit or punctuation."""
    return bool(regex.fullmatch(r"\X", text)) and not regex.match(r"[\p{L}\p{N}\p{P}\s]", text)


def _degrees(text: str, bound: int) -> bool:
    try:
        value = Decimal(text.strip())
    except ArithmeticError:
        return False
    return value.is_finite() and -bound <= value <= bound
