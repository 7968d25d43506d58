"""The command line: `python -m engine flows validate [PATH]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .flows import validate_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="WhatsApp conversation engine"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    flows = commands.add_parser("flows", help="work with flow files")
    flow_commands = flows.add_subparsers(dest="flows_command", required=True)
    validate = flow_commands.add_parser("validate", help="check flows; print file:line: problem")
    validate.add_argument(
        "path", nargs="?", help="a flow file or folder (default: $FLOWS_DIR or flows)"
    )
    args = parser.parse_args(argv)
    return validate_command(Path(args.path or os.environ.get("FLOWS_DIR", "flows")))


def validate_command(path: Path) -> int:
    problems = validate_path(path)
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"ok: {path} is valid")
    return 0
