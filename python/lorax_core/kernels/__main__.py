"""``python -m lorax_core.kernels [-v]``: compile every CUDA kernel (no GPU needed) and print the
library's path; exit status 1 with the compiler's message on any error."""

from __future__ import annotations

import sys
import time

from lorax_core.kernels._loader import build


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    start = time.perf_counter()
    try:
        path = build(verbose="-v" in args)
    except RuntimeError as e:
        print(f"lorax_core.kernels: {e}", file=sys.stderr)
        return 1
    print(f"lorax_core.kernels: built {path} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
