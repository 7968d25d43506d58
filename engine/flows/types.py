"""Typed answers: what a customer wrote, read as a number, yes/no, an email, a phone, a date.

    on:
      - type: integer        # a branch that matches when the answer reads as its type
        min: 1
        max: 20
        save: qty            # the value read (a Decimal here), not the text
        go: next

`read(kind, text, ...)` is pure: it returns the value, or None with the reason the answer does not
fit (shown by the step's default re-prompt). Numbers accept what people type ("5.", "3 cakes",
"1,200", "twelve"); dates and times are read by dateparser, relative to when the customer wrote
("tomorrow 5pm", "friday", "24/12") in the business's TIMEZONE, as the next such moment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

import dateparser

TYPES = (
    "integer",
    "number",
    "yesno",
    "email",
    "phone",
    "text",
    "date",
    "time",
    "datetime",
)
MAX_READ = 200  # the longest answer a type reads (a date parser on 60 KB would stall); longer: no

_NUMBER = re.compile(
    r"(?<![\w.+-])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?![\w.])"  # 5, 5., 1,200.50
    r"|(?<![\w.+-])[-+]?\.\d+(?![\w.])"  # .5
)
_DOTTED = re.compile(r"\d\.\d{3}(?:\.\d{3})+\b|^[-+]?\d{1,3}\.\d{3}$")  # 2.000.000, 1.000
_FRACTIONS = frozenset({"half", "halves", "quarter", "quarters", "third", "thirds"})
_WORDS = {
    "zero": 0, "one": 1, "single": 1, "two": 2, "couple": 2, "three": 3, "four": 4,
    "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11,
    "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip
_TIMES = {"dozen": 12, "hundred": 100}
_YES = frozenset(
    [
        "yes",
        "y",
        "yeah",
        "yep",
        "yup",
        "sure",
        "ok",
        "okay",
        "k",
        "correct",
        "right",
        "true",
        "affirmative",
        "si",
        "sí",
        "oui",
        "ja",
        "👍",
        "✅",
    ]
)
_NO = frozenset(["no", "n", "nope", "nah", "not", "false", "negative", "non", "nein", "👎", "❌"])
_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(r"\+?[\d\s().-]{7,25}")


@dataclass(frozen=True, slots=True)
class Bounds:
    """min/max: a number's value, or a text's length."""

    low: Decimal | None = None
    high: Decimal | None = None


def describe(kind: str, bounds: Bounds) -> str:
    """What the type asks for, in words: 'a whole number from 1 to 20'."""
    what = {
        "integer": "a whole number",
        "number": "a number",
        "yesno": "yes or no",
        "email": "an email address",
        "phone": "a phone number with its country code",
        "text": "an answer",
        "date": "a date, like 24/12 or tomorrow",
        "time": "a time, like 5pm or 17:30",
        "datetime": "a date and time, like tomorrow 5pm",
        "choice": "one of the options",
    }[kind]
    low, high = bounds.low, bounds.high
    if kind == "text":
        if low is not None and high is not None:
            return f"an answer of {low} to {high} characters"
        if high is not None:
            return f"an answer of at most {high} characters"
        if low is not None:
            return f"an answer of at least {low} characters"
        return what
    if low is not None and high is not None:
        return f"{what} from {low} to {high}"
    if low is not None:
        return f"{what} of at least {low}"
    if high is not None:
        return f"{what} of at most {high}"
    return what


def read(
    kind: str,
    text: str,
    bounds: Bounds = Bounds(),
    *,
    choice: str | None = None,
    at: float = 0.0,
    zone: ZoneInfo | None = None,
) -> tuple[object, bool]:
    """(value, True) when `text` (or the tapped `choice`) reads as `kind` within `bounds`;
    (None, False) when it does not."""
    if kind == "text":
        n = len(text)
        ok = bool(text) and _within(Decimal(n), bounds)
        return (text if ok else None), ok
    text = text.strip()
    if len(text) > MAX_READ:
        return None, False  # not cut and then read: a 100,000-digit answer is not a number
    value: object = None
    if kind in ("integer", "number"):
        value = _number(text, kind == "integer")
        if value is not None and not _within(value, bounds):
            value = None
    elif kind == "yesno":
        value = _yesno(choice or text)
    elif kind == "email":
        found = _EMAIL.fullmatch(text.strip("<>.,;:!? "))
        if found is not None:
            local, _, domain = found.group(0).rpartition("@")
            value = f"{local}@{domain.lower()}"
    elif kind == "phone":
        value = _phone(text)
    else:
        value = _moment(kind, text, at, zone or ZoneInfo("UTC"))
    return value, value is not None


def _within(value: Decimal, bounds: Bounds) -> bool:
    return (bounds.low is None or value >= bounds.low) and (
        bounds.high is None or value <= bounds.high
    )


def _number(text: str, whole: bool) -> Decimal | None:
    if _DOTTED.search(text) and whole:
        return None  # "1.000" is one in English and a thousand elsewhere: ask again
    found = _NUMBER.findall(text)
    if len(found) > 1 or (not found and re.search(r"\d", text)):
        return None  # "3 or 4", "1e5", "2.000.000": which number?
    if found:
        raw = found[0].replace(",", "")
        try:
            number = Decimal(raw[:-1] if raw.endswith(".") else raw)
        except InvalidOperation:
            return None
    else:
        spelled = _spelled(text)
        if spelled is None:
            return None
        number = spelled
    if whole and number != number.to_integral_value():
        return None
    return number.normalize() + 0 if whole else number  # + 0: "-0" is 0


def _spelled(text: str) -> Decimal | None:
    """'twelve', 'a dozen', 'twenty five', 'two hundred', 'two thousand five hundred'."""
    words = re.findall(r"[a-z]+", text.lower())
    if _FRACTIONS & set(words):
        return None  # "two and a half": not a number this reads
    total, current, seen = 0, 0, False
    for word in words:
        if word in _WORDS:
            current += _WORDS[word]
        elif word in ("dozen", "hundred"):
            current = max(current, 1) * _TIMES[word]
        elif word in ("thousand", "million"):
            total += max(current, 1) * (1000 if word == "thousand" else 1_000_000)
            current = 0
        else:
            continue
        seen = True
    return Decimal(total + current) if seen else None


def _yesno(text: str) -> bool | None:
    words = re.findall(r"[\w']+|[^\w\s]", text.lower())
    yes = any(w in _YES for w in words)
    no = any(w in _NO for w in words)
    if yes == no:
        return None  # neither, or both ("yes no"): ask again
    return yes


def _phone(text: str) -> str | None:
    found = _PHONE.fullmatch(text)
    if found is None:
        return None
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15:  # E.164 allows at most 15 digits
        return None
    return ("+" if text.lstrip().startswith("+") else "") + digits


_YEAR = re.compile(r"\b\d{4}\b")
_CLOCK = re.compile(  # a time of day as written: 5pm, 17:30, 5.30 pm (not the 24 of "Dec 24")
    r"\b(\d{1,2})(?:[:.h](\d{2})\s*(am|pm|a\.m\.|p\.m\.)?|\s*(am|pm|a\.m\.|p\.m\.))(?![\w/-])",
    re.IGNORECASE,
)
_TIME_WORDS = re.compile(
    r"\d\s*(?:am|pm|a\.m|p\.m|h\b|o'?clock)|\d:\d|noon|midnight|morning|afternoon|evening|night"
    r"|\bin \d+ (?:minute|hour)",
    re.IGNORECASE,
)


def _plausible(kind: str, text: str, found: datetime, base: datetime) -> bool:
    """What dateparser makes of a half-read answer: "12/24" is not 12 December 2124, "5" is
    not midnight, "tomorrow 25pm" is not tomorrow at this time of day."""
    if not _YEAR.search(text) and abs(found.year - base.year) > 1:
        return False  # a year nobody wrote
    if kind in ("time", "datetime"):
        for hour, minute, half, bare_half in _CLOCK.findall(text):
            if int(hour) > (12 if half or bare_half else 23) or (minute and int(minute) > 59):
                return False
        if kind == "time" and not _TIME_WORDS.search(text):
            return False
    return True


def _moment(kind: str, text: str, at: float, zone: ZoneInfo) -> str | None:
    if not text or not re.search(r"[\w]", text):
        return None
    base = datetime.fromtimestamp(at, zone).replace(tzinfo=None)
    settings = {
        "TIMEZONE": zone.key,
        "TO_TIMEZONE": zone.key,
        "RETURN_AS_TIMEZONE_AWARE": False,
        "RELATIVE_BASE": base,
        "DATE_ORDER": "DMY",
        "PREFER_DATES_FROM": "current_period",
    }
    try:
        found = dateparser.parse(text, languages=["en"], settings=settings)
        # The next such moment: "10am" at 3pm is tomorrow, "friday" is the coming one.
        late = found is not None and (
            found.date() < base.date() if kind == "date" else found < base
        )
        if late:
            settings["PREFER_DATES_FROM"] = "future"
            found = dateparser.parse(text, languages=["en"], settings=settings)
    except (ValueError, OverflowError, TypeError):
        return None
    if found is None or not _plausible(kind, text, found, base):
        return None
    moment: datetime = found
    if kind == "date":
        return moment.date().isoformat()
    if kind == "time":
        return moment.strftime("%H:%M")
    return moment.replace(tzinfo=zone).isoformat(timespec="minutes")
