"""One run in its own process.

    python -m lorax_core.bench.worker SPEC OUT [PLANS] [THREADS] [PROGRESS]


Reads the run's spec (JSON), runs it (:func:`lorax_core.bench.runner.run`) and writes its record
to ``OUT`` atomically; exit status 0 on success. ``lorax-bench`` starts one per run so that the
peak memory it reports belongs to that run alone.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from lorax_core.bench.runner import run, write_record


def main(argv: list[str] | None = None) -> int:
    """Run the spec in ``argv[0]``, write the record to ``argv[1]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        usage = "usage: python -m lorax_core.bench.worker SPEC OUT [PLANS] [THREADS] [PROGRESS]"
        print(usage, file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    plans = Path(args[2]) if len(args) > 2 and args[2] else None
    threads = int(args[3]) if len(args) > 3 else None
    progress = args[4] != "0" if len(args) > 4 else True
    label = os.environ.get("LORAX_BENCH_LABEL")
    outcome = run(spec, plan_dir=plans, threads=threads, progress=progress, description=label)
    write_record(Path(args[1]), outcome.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
