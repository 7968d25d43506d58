"""What a failed HTTP call to a provider means, the same for every channel's sender."""

from __future__ import annotations

import aiohttp

from engine.errors import ChannelDown


def transport_error(e: TimeoutError | aiohttp.ClientError) -> ChannelDown:
    """An outage of the number. A connection that never opened sent nothing; any other failure
    (a timeout, a connection dropped after sending) may have left the message with the
    provider, so sending it again may show it twice (`maybe_sent`)."""
    name = type(e).__name__
    if isinstance(e, aiohttp.ClientConnectorError):
        return ChannelDown(f"{name}: {e}", cause="outage")
    return ChannelDown(f"{name}: {e}" if str(e) else name, cause="outage", maybe_sent=True)
