"""The business's approved WhatsApp templates, declared once in `templates.yaml` beside the flows.

WhatsApp delivers only approved templates outside the 24-hour window. A flow names one as the
fallback of a message that may leave late (a reminder, an order update), or sends one outright;
the agent API sends them too. Each entry mirrors what was approved at Meta (name, language, the
body with its `{{1}}` or `{{name}}` parameters, the header kind, the buttons), so that the
validator can check every use against it at file:line, before a customer sees error 132000.

```yaml
cart_reminder:
  language: en_US
  body: "Hi {{1}}, your cart of {{2}} items is saved."
  header: image                      # text "..." (maybe with {{1}}), image, video or document
  buttons:
    - quick_reply: Show my cart      # its payload comes back as a button tap
    - url: "https://shop.example/cart/{{1}}"
  twilio_content_sid: HX0123...      # the same template on Twilio (Content API)
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Problem
from ..outbound import TemplateMessage
from .reading import Reading
from .source import SourceError, YList, YMap, decode
from .spec import slug

FILE = "templates.yaml"  # in FLOWS_DIR; not a flow
NAME = re.compile(r"[a-z0-9_]{1,512}")  # Meta: lower case letters, digits and underscores
LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2}|_[A-Za-z]{4})?")  # en, en_US, pt_BR, zh_Hant
PARAM = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
NAMED = re.compile(r"[a-z_][a-z0-9_]*")
MEDIA = ("image", "video", "document")
KEYS = ("language", "category", "body", "header", "buttons", "twilio_content_sid")
CATEGORIES = ("marketing", "utility", "authentication")
BODY_LIMIT = 1024  # Meta's limit on a template body
HEADER_LIMIT = 60  # on a text header
BUTTON_LIMIT = 25  # on a quick reply button's title
VALUE_LIMIT = 1024  # and on what one value may hold once filled in


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    language: str
    body: str
    params: tuple[str, ...]  # "1", "2" ... or names, in the order they first appear
    named: bool
    header: str | None = None  # text | image | video | document
    header_text: str | None = None
    header_params: int = 0  # a text header's {{1}}: at most one
    buttons: tuple[tuple[str, str, bool], ...] = ()  # (quick_reply | url, text, takes a value)
    content_sid: str | None = None
    category: str | None = None
    line: int = 0

    @property
    def button_values(self) -> int:
        return sum(1 for _kind, _text, takes in self.buttons if takes)

    def fill(
        self,
        values: list[str] | dict[str, str],
        header: str | None = None,
        buttons: list[str] | None = None,
    ) -> TemplateMessage:
        """The message with `values` in it; raise ValueError naming what does not fit."""
        problem = self.mismatch(values, header, buttons)
        if problem:
            raise ValueError(problem)
        if isinstance(values, dict):
            pairs = tuple((k, _value(values[k])) for k in self.params)
            lookup = dict(pairs)
        else:
            pairs = ()
            lookup = {str(i + 1): _value(v) for i, v in enumerate(values)}
        body = PARAM.sub(lambda m: lookup.get(m.group(1), m.group(0)), self.body)
        head: tuple[str, str] | None = None
        if self.header is not None and (self.header != "text" or self.header_params):
            head = (self.header, _value(header or ""))
        given = iter(buttons or ())
        out_buttons = []
        for index, (kind, text, takes) in enumerate(self.buttons):
            if takes:
                out_buttons.append((kind, index, _value(next(given))))
            elif kind == "quick_reply":
                # Its tap comes back with this payload: the flow matches it as a choice id.
                out_buttons.append((kind, index, slug(text)))
        return TemplateMessage(
            name=self.name,
            language=self.language,
            body=body,
            params=tuple(lookup[str(i + 1)] for i in range(len(lookup))) if not pairs else (),
            named=pairs,
            header=head,
            buttons=tuple(out_buttons),
            content_sid=self.content_sid,
            category=self.category,
        )

    def mismatch(
        self,
        values: list[Any] | dict[str, Any],
        header: Any = None,
        buttons: list[Any] | None = None,
    ) -> str | None:
        """What is wrong with these values for this template, or None."""
        if isinstance(values, dict):
            if not self.named:
                return (
                    f"template {self.name} takes {len(self.params)} positional values "
                    "(params: a list), not named ones"
                )
            missing = [p for p in self.params if p not in values]
            extra = [k for k in values if k not in self.params]
            if missing or extra:
                parts = []
                if missing:
                    parts.append("missing " + ", ".join(missing))
                if extra:
                    parts.append("unknown " + ", ".join(str(k) for k in extra))
                return (
                    f"template {self.name}: {'; '.join(parts)} (it takes {', '.join(self.params)})"
                )
        else:
            if self.named and self.params:
                return f"template {self.name} takes named values: {', '.join(self.params)}"
            if len(values) != len(self.params):
                return f"template {self.name} takes {len(self.params)} values, {len(values)} given"
        wrong = self._header_mismatch(header)
        if wrong:
            return wrong
        count = len(buttons or ())
        if count != self.button_values:
            return (
                f"template {self.name} has {self.button_values} button(s) that take a value, "
                f"{count} given"
            )
        return None

    def _header_mismatch(self, header: Any) -> str | None:
        needs_header = self.header in MEDIA or self.header_params > 0
        if needs_header and header is None:
            what = "a link or media id" if self.header in MEDIA else "its value"
            return f"template {self.name} has a {self.header} header: give header: ({what})"
        if not needs_header and header is not None:
            return f"template {self.name} has no header that takes a value"
        static = isinstance(header, str) and "{" not in header  # else: checked when filled in
        if self.header in MEDIA and static and not _link_or_id(header):
            return (
                f"template {self.name}: its {self.header} header is a link (https://...) "
                f"or a media id (digits), not {header[:60]!r}"
            )
        return None


def _link_or_id(value: str) -> bool:
    return value.startswith(("https://", "http://")) or value.isdigit()


def _value(text: str) -> str:
    # Meta refuses a value with a newline, a tab or more than four spaces in a row (132018).
    flat = re.sub(r"\s+", " ", str(text)).strip()
    return flat[:VALUE_LIMIT] or "-"


def read_templates(folder: Path) -> tuple[dict[str, Template], list[Problem]]:
    """The templates declared in `folder/templates.yaml` (none when there is no such file)."""
    path = folder / FILE
    if not path.is_file():
        return {}, []
    r = Reading(str(path))
    try:
        raw = decode(path.read_bytes())
    except OSError as e:
        r.err(1, f"cannot read templates: {e}")
        return {}, r.problems
    except SourceError as e:
        r.err(e.line, e.message)
        return {}, r.problems
    doc = r.yaml(raw, r.file)
    if doc is None:
        return {}, r.problems
    if not isinstance(doc, YMap):
        r.err(getattr(doc, "line", 1), "templates.yaml: a mapping of template names to entries")
        return {}, r.problems
    found: dict[str, Template] = {}
    for name, entry in doc.items():
        template = _entry(r, name, entry, doc.line_of(name))
        if template is not None:
            found[name] = template
    return found, sorted(r.problems, key=lambda p: p.line)


def _entry(r: Reading, name: str, entry: Any, line: int) -> Template | None:
    if not NAME.fullmatch(name):
        r.err(line, f"template name {name!r}: lower case letters, digits and '_' (as at Meta)")
    if not isinstance(entry, YMap):
        r.err(line, f"template {name}: a mapping with language: and body:")
        return None
    r.keys(entry, KEYS, f"template {name}")
    language = r.scalar(entry, "language", required=True) or ""
    if language and not LANGUAGE.fullmatch(language):
        r.err(entry.line_of("language"), f"language {language!r}: a code like en, en_US or pt_BR")
    category = r.scalar(entry, "category")
    if category is not None and category not in CATEGORIES:
        r.err(entry.line_of("category"), f"category: one of {', '.join(CATEGORIES)}")
    body = r.scalar(entry, "body", required=True) or ""
    if "body" in entry and not body.strip():
        r.err(entry.line_of("body"), f"template {name}: body is empty")
    _braces(r, body, entry.line_of("body"), f"template {name} body")
    params = _params(r, body, entry.line_of("body"), f"template {name} body")
    if len(body) > BODY_LIMIT:
        r.err(entry.line_of("body"), f"body is {len(body)} characters; WhatsApp allows 1024")
    named = bool(params) and not params[0].isdigit()
    header, header_text, header_params = _header(r, entry, name)
    buttons = _buttons(r, entry, name)
    sid = r.scalar(entry, "twilio_content_sid")
    if sid is not None and not re.fullmatch(r"HX[0-9a-fA-F]{32}", sid):
        r.err(entry.line_of("twilio_content_sid"), "twilio_content_sid: HX and 32 hex digits")
    return Template(
        name=name,
        language=language,
        body=body,
        params=params,
        named=named,
        header=header,
        header_text=header_text,
        header_params=header_params,
        buttons=buttons,
        content_sid=sid,
        category=category,
        line=line,
    )


def _braces(r: Reading, text: str, line: int, what: str) -> None:
    """A brace that is not part of a {{parameter}}: Meta would show it, or refuse the text."""
    if "{" in PARAM.sub("", text) or "}" in PARAM.sub("", text):
        r.err(line, f"{what}: a stray brace (parameters are written {{{{1}}}} or {{{{name}}}})")


def _params(r: Reading, text: str, line: int, what: str) -> tuple[str, ...]:
    """The parameters of an approved text: {{1}}, {{2}} ... in order, or names; not both."""
    found: list[str] = []
    for m in PARAM.finditer(text):
        if m.group(1) not in found:
            found.append(m.group(1))
    if not found:
        return ()
    if all(p.isdigit() for p in found):
        numbers = sorted(int(p) for p in found)
        if numbers != list(range(1, len(numbers) + 1)):
            r.err(
                line, f"{what}: positional parameters must be {{{{1}}}} to {{{{{len(numbers)}}}}}"
            )
        return tuple(str(n) for n in numbers)
    if any(p.isdigit() for p in found):
        r.err(line, f"{what}: use {{{{1}}}}-style or {{{{name}}}}-style parameters, not both")
        return ()
    for p in found:
        if not NAMED.fullmatch(p):
            r.err(line, f"{what}: parameter name {p!r}: lower case letters, digits and '_'")
    return tuple(found)


def _header(r: Reading, entry: YMap, name: str) -> tuple[str | None, str | None, int]:
    raw = entry.get("header")
    if raw is None:
        return None, None, 0
    line = entry.line_of("header")
    if isinstance(raw, str) and raw in MEDIA:
        return raw, None, 0
    if isinstance(raw, YMap) and set(raw) == {"text"} and isinstance(raw["text"], str):
        if len(raw["text"]) > HEADER_LIMIT:
            r.err(line, f"template {name}: a text header is at most {HEADER_LIMIT} characters")
        _braces(r, raw["text"], line, f"template {name} header")
        params = _params(r, raw["text"], line, f"template {name} header")
        if len(params) > 1 or (params and params[0] != "1"):
            r.err(line, f"template {name}: a text header takes at most one value, {{{{1}}}}")
        return "text", raw["text"], len(params)
    r.err(line, f"header: one of {', '.join(MEDIA)}, or {{text: ...}}")
    return None, None, 0


def _buttons(r: Reading, entry: YMap, name: str) -> tuple[tuple[str, str, bool], ...]:
    raw = entry.get("buttons")
    if raw is None:
        return ()
    line = entry.line_of("buttons")
    if not isinstance(raw, YList) or not raw:
        r.err(line, "buttons: a list like [{quick_reply: Yes}, {url: 'https://...{{1}}'}]")
        return ()
    if len(raw) > 10:
        r.err(line, f"{len(raw)} buttons: a template has at most 10")
    out = []
    for i, item in enumerate(raw):
        at = raw.line_of(i)
        if not (isinstance(item, YMap) and len(item) == 1):
            r.err(at, "a button is {quick_reply: title} or {url: 'https://...'}")
            continue
        ((kind, text),) = item.items()
        if kind not in ("quick_reply", "url") or not isinstance(text, str) or not text.strip():
            r.err(at, "a button is {quick_reply: title} or {url: 'https://...'}")
            continue
        params = _params(r, text, at, f"template {name} button")
        if kind == "quick_reply" and params:
            r.err(at, "a quick_reply button's title takes no parameter")
        if kind == "quick_reply" and len(text) > BUTTON_LIMIT:
            r.err(at, f"a quick_reply button's title is at most {BUTTON_LIMIT} characters")
        if kind == "url" and not text.startswith(("https://", "http://")):
            r.err(at, "a url button's URL starts with https://")
        if kind == "url" and (len(params) > 1 or (params and not text.rstrip().endswith("}}"))):
            r.err(at, "a url button takes one value, {{1}}, at the end of the URL")
        out.append((kind, text, kind == "url" and bool(params)))
    return tuple(out)
