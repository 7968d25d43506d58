"""The engine's errors, split by what the caller does next.

EngineError
├── ConfigError            a setting or a flow that cannot work: stop at start, exit 2
│   └── FlowError          flows that do not validate; carries every Problem found
├── StoreUnavailable       the store cannot record now: answer 503 so the provider retries
├── StoreRejected          this write can never be recorded (bad data, a bug): give it up
├── DeliveryError          a send that did not succeed; carries the provider's code
│   ├── ChannelDown        the number cannot send anything now (outage, throughput, token):
│   │                      pause its whole queue, probe, resume; no message is charged
│   ├── RetryableDelivery  this recipient must wait (pair rate): back off this contact only
│   └── PermanentDelivery  an error about this message: record it as failed and move on
│       ├── OutsideWindow  the 24-hour window has closed: send the template fallback instead
│       ├── OptedOut       the customer stopped marketing messages: record it on the contact
│       └── BadMessage     the message as built is wrong (a flow or engine bug): log it loudly
└── ActorStopped           the contact's actor stopped before it could answer an ask
"""

from __future__ import annotations

from dataclasses import dataclass


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(EngineError):
    """A configuration that cannot work; the process stops at start with this one line."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a flow file, at its exact place."""

    file: str
    line: int
    message: str
    warning: bool = False  # legal but almost always a mistake: reported, does not fail

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        return f"{self.file}:{self.line}: {kind}{self.message}"


def errors_in(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if not p.warning]


class FlowError(ConfigError):
    """One or more flows do not validate."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = problems[0] if problems else "no problems"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"invalid flow: {first}{more}")


class StoreUnavailable(EngineError):
    """The store could not record a write; nothing in that write was accepted."""


class StoreRejected(EngineError):
    """The store refused this write for what it holds, not for its own state: retrying the
    same write cannot help. The caller records the failure and moves on."""


class DeliveryError(EngineError):
    """A send failed; `code` is the provider's error code when it gave one. `local` is set when
    the provider said nothing (the message could not even be built or sent from here): such an
    error tells nothing about the provider's state."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        status: int | None = None,
        local: bool = False,
    ):
        super().__init__(message)
        self.code = code
        self.status = status
        self.local = local


class RetryableDelivery(DeliveryError):
    """The provider may accept the same message later, but only this recipient must wait."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        maybe_sent: bool = False,
        local: bool = False,
        attempts: int | None = None,
    ):
        super().__init__(message, code=code, status=status, local=local)
        self.retry_after = retry_after
        # At most this many attempts in all (Meta's 131000, "unknown error"); None: no limit.
        self.attempts = attempts
        # True when the provider may have received the message (a timeout or a connection
        # lost after sending): sending it again may show it twice.
        self.maybe_sent = maybe_sent


class ChannelDown(RetryableDelivery):
    """The provider or the account cannot take any message from this number now.

    `cause` says which, for operators: "outage" (5xx, timeouts, connection errors, temporary
    downtime), "throttled" (throughput limits; `retry_after` when the provider gave one) or
    "auth" (an expired or revoked token, missing permissions, a locked or unpaid account)."""

    def __init__(
        self,
        message: str,
        *,
        cause: str,
        code: int | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        maybe_sent: bool = False,
    ):
        super().__init__(
            message, code=code, status=status, retry_after=retry_after, maybe_sent=maybe_sent
        )
        self.cause = cause


class PermanentDelivery(DeliveryError):
    """The provider will never accept this message as it is (bad recipient, window, token)."""


class OutsideWindow(PermanentDelivery):
    """The customer's 24-hour window has closed (Meta 131047, Twilio 63016): only a template
    may go now."""


class OptedOut(PermanentDelivery):
    """The customer does not take marketing messages (Meta 131050, Twilio 21610), or not for
    a while (131049: `seconds`, after which the business may try again)."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        status: int | None = None,
        seconds: float | None = None,
        everything: bool = False,
    ):
        super().__init__(message, code=code, status=status)
        self.seconds = seconds  # None: until the customer opts in again
        self.everything = everything  # not only marketing: every message (a STOP on Twilio)


class BadMessage(PermanentDelivery):
    """The provider says the message itself is malformed (Meta 100, 131008, 131009): the flow
    or the engine built it wrong, and every such message will fail the same way."""


class ActorStopped(EngineError):
    """The actor stopped with this request still in its mailbox."""
