"""`python -m engine`: the command line (see engine.cli).

Like server.py, this is a composition root: it gives the command line the built-in actions the
adapters implement, so `chat` calls a flow's http actions for real.
"""

import os
import sys

from adapters.http_action import HttpAction
from engine.cli import main
from engine.clock import SystemClock


def run() -> int:
    http = HttpAction(SystemClock(), secret=os.environ.get("ACTIONS_SECRET", "").strip() or None)
    return main(provided={"http": http.call}, close=http.close)


if __name__ == "__main__":
    sys.exit(run())
