"""Contact identity: which conversation a customer id on a business number belongs to.

A customer is known by their business-scoped user id when Meta sends one, and by their phone
digits otherwise. When a payload carries both they are linked, so a later message carrying
either one reaches the same conversation. The map lives in memory (loaded at start, a few dozen
bytes per id) because every inbound message consults it; new links are persisted with the
webhook that revealed them.
"""

from __future__ import annotations

import logging

from .events import Customer
from .logs import mask
from .ports import Alias
from .records import contact_key

log = logging.getLogger(__name__)


class Directory:
    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], str] = {}
        # Keys whose links were forgotten after a failed write: a stored conversation may
        # exist for them although no link says so, so they are never reported new.
        self._uncertain: set[str] = set()
        # What a relink replaced, so that forgetting the relink restores it.
        self._replaced: dict[tuple[str, str, str], str] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def load(self, aliases: list[Alias]) -> None:
        for a in aliases:
            self._keys[(a.number, a.alias)] = a.key

    def lookup(self, number: str, alias: str) -> str | None:
        return self._keys.get((number, alias))

    def resolve(self, customer: Customer) -> tuple[str, list[Alias], bool]:
        """The contact key for `customer`, the links this message adds (to persist), and
        whether the contact is new: then no conversation can be stored for it yet."""
        number = customer.number
        ids = [i for i in (customer.user_id, customer.phone) if i]
        found = [self._keys.get((number, i)) for i in ids]
        key = next((k for k in found if k is not None), None)
        new = key is None
        if key is None:
            key = contact_key(number, ids[0])
            new = key not in self._uncertain
        links = []
        for alias, current in zip(ids, found, strict=True):
            if current == key:
                continue
            if current is not None:
                # The same person was known under two ids separately; the user id wins from now on.
                log.warning("relinking %s from %s to %s", mask(alias), mask(current), mask(key))
                self._replaced[(number, alias, key)] = current
            link = Alias(number, alias, key)
            self._keys[(number, alias)] = key
            links.append(link)
        return key, links, new

    def link(self, number: str, alias: str, key: str) -> Alias | None:
        """Link one more id to a known contact (a changed number or user id)."""
        current = self._keys.get((number, alias))
        if current == key:
            return None
        if current is not None:
            self._replaced[(number, alias, key)] = current
        self._keys[(number, alias)] = key
        return Alias(number, alias, key)

    def committed(self, links: list[Alias]) -> None:
        """The links are stored: nothing to undo any more."""
        for a in links:
            self._replaced.pop((a.number, a.alias, a.key), None)

    def forget(self, links: list[Alias]) -> None:
        """Undo links whose write failed (a relink gets its previous contact back)."""
        for a in links:
            self._uncertain.add(a.key)
            previous = self._replaced.pop((a.number, a.alias, a.key), None)
            if self._keys.get((a.number, a.alias)) != a.key:
                continue
            if previous is None:
                del self._keys[(a.number, a.alias)]
            else:
                self._uncertain.add(previous)
                self._keys[(a.number, a.alias)] = previous
