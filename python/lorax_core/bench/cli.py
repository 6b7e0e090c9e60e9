"""The ``lorax-bench`` command."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Runs the method comparison (not built yet)."""
    print("lorax-bench: not built yet", file=sys.stderr)
    return 2
