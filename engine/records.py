"""The per-contact record (the flow machine's model) and its versioned JSON snapshot.

A conversation is a few hundred bytes: which flow and state, the slots, the re-prompt count,
who holds it (bot or person) and the journal mark (`last_seq`). It is all a contact needs to
resume after a restart; no machine object is ever stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .flows.values import Value, from_json, to_json

SNAPSHOT_VERSION = 2  # 2: typed slot values (numbers, lists, records); 1: text only

# A message's status only moves up this ladder; `failed` is terminal.
STATUS_RANK = {
    "received": 0,
    "pending": 0,
    "accepted": 1,
    "sent": 2,
    "delivered": 3,
    "read": 4,
    "played": 5,
    "failed": 9,
}


def contact_key(number: str, alias: str) -> str:
    """A contact's stable key: the business number and the first id it was seen with."""
    return f"{number}:{alias}"


@dataclass(slots=True)
class Conversation:
    key: str
    number: str
    user_id: str | None = None
    phone: str | None = None
    name: str | None = None
    flow: str = ""
    flow_version: str = ""
    state: str | None = None  # None: not started; the next message starts the flow
    slots: dict[str, Value] = field(default_factory=dict)
    misses: int = 0
    handoff_until: float | None = None  # a person holds the conversation until then
    failures: int = 0  # consecutive steps that raised
    last_seq: int = 0  # the last journal entry this snapshot covers
    last_in_at: float | None = None  # the customer's last message: the 24-hour window
    opted_out: bool = False  # the customer stopped marketing messages (131050)
    stopped: bool = False  # the customer replied STOP (Twilio 21610): nothing goes until they write
    marketing_paused_until: float | None = None  # a per-user marketing limit (131049)
    llm_day: str = ""  # the UTC day llm_calls counts (a contact's daily budget of model turns)
    llm_calls: int = 0
    # Not stored: set before each step, why a model cannot be asked now ("unavailable": none is
    # configured; "budget": today's calls are spent), or None when it can.
    llm_block: str | None = "unavailable"
    llm_turn_at: float | None = None  # not stored: when this turn's first model call began
    updated_at: float = 0.0
    step: int = 0  # counts handled events; a timer set at another step is void
    timer_due: float | None = None  # the flow timer (reminders, delays) armed for this step
    timer_rung: int = 0
    # The action call this step is waiting for, recorded before it runs (see engine.calls):
    # {key, name, args (tagged JSON), within, attempt}; None when no call is outstanding.
    action: dict[str, Any] | None = None
    # The places of flows that called another (engine.flows.stack), innermost last:
    # {flow, version, state, slots, misses, save, resume}.
    stack: list[dict[str, Any]] = field(default_factory=list)

    def held(self, now: float) -> bool:
        return self.handoff_until is not None and now < self.handoff_until

    def snapshot(self) -> dict[str, Any]:
        return {
            "v": SNAPSHOT_VERSION,
            "number": self.number,
            "user_id": self.user_id,
            "phone": self.phone,
            "name": self.name,
            "flow": self.flow,
            "flow_version": self.flow_version,
            "state": self.state,
            "slots": {k: to_json(v) for k, v in self.slots.items()},
            "misses": self.misses,
            "handoff_until": self.handoff_until,
            "failures": self.failures,
            "last_seq": self.last_seq,
            "last_in_at": self.last_in_at,
            "opted_out": self.opted_out,
            "stopped": self.stopped,
            "marketing_paused_until": self.marketing_paused_until,
            "llm_day": self.llm_day,
            "llm_calls": self.llm_calls,
            "updated_at": self.updated_at,
            "step": self.step,
            "timer_due": self.timer_due,
            "timer_rung": self.timer_rung,
            "action": self.action,
            "stack": [
                {**f, "slots": {k: to_json(v) for k, v in f["slots"].items()}} for f in self.stack
            ],
        }

    @classmethod
    def from_snapshot(cls, key: str, data: dict[str, Any]) -> Conversation:
        version = data.get("v")
        if version not in (1, SNAPSHOT_VERSION):
            raise ValueError(f"snapshot of {key} has unknown version {version!r}")
        # Version 1 held text only, which reads back the same: no migration is needed.
        slots = data.get("slots") or {}
        return cls(
            key=key,
            number=str(data["number"]),
            user_id=data.get("user_id"),
            phone=data.get("phone"),
            name=data.get("name"),
            flow=str(data.get("flow") or ""),
            flow_version=str(data.get("flow_version") or ""),
            state=data.get("state"),
            slots={str(k): from_json(v) for k, v in slots.items()},
            misses=int(data.get("misses") or 0),
            handoff_until=data.get("handoff_until"),
            failures=int(data.get("failures") or 0),
            last_seq=int(data.get("last_seq") or 0),
            last_in_at=data.get("last_in_at"),
            opted_out=bool(data.get("opted_out")),
            stopped=bool(data.get("stopped")),
            marketing_paused_until=data.get("marketing_paused_until"),
            llm_day=str(data.get("llm_day") or ""),
            llm_calls=int(data.get("llm_calls") or 0),
            updated_at=float(data.get("updated_at") or 0.0),
            step=int(data.get("step") or 0),
            timer_due=data.get("timer_due"),
            timer_rung=int(data.get("timer_rung") or 0),
            action=data.get("action") if isinstance(data.get("action"), dict) else None,
            stack=[
                {**f, "slots": {str(k): from_json(v) for k, v in (f.get("slots") or {}).items()}}
                for f in data.get("stack") or ()
                if isinstance(f, dict) and isinstance(f.get("flow"), str)
            ],
        )
