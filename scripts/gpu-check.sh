#!/usr/bin/env bash
# On a machine with a CUDA GPU: builds the kernels, runs every cuda-marked test and the kernel
# and GPU-kNN benchmarks, and prints one table (well under 8 minutes on an H100/H200).
#
# Usage: bash scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "gpu-check: no CUDA device visible" >&2
  exit 1
}
out=$(mktemp -d)
start=$SECONDS

echo "== build"
timeout 300 bash scripts/compile-kernels.sh
build_s=$((SECONDS - start))

echo "== cuda-marked tests"
set +e
timeout 240 python -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tee "$out/pytest.txt"
tests_rc=${PIPESTATUS[0]}
set -e
tests_s=$((SECONDS - start - build_s))

echo "== benchmarks"
timeout 150 python benches/bench_kernels.py --repeats 20 --json "$out/kernels.json" || true
timeout 240 python benches/bench_knn_gpu.py --json "$out/knn.json" || true

python - "$out" "$build_s" "$tests_s" "$tests_rc" "$((SECONDS - start))" <<'PY'
import json, pathlib, sys

import torch

out, build_s, tests_s, tests_rc, total_s = sys.argv[1:]
summary = pathlib.Path(out, "pytest.txt").read_text().strip().splitlines()
rows = [
    {"bench": "build (compile-kernels.sh)", "case": "all kernels", "result": f"{build_s} s"},
    {"bench": "cuda-marked tests", "case": summary[-1] if summary else "no output",
     "result": f"{'pass' if tests_rc == '0' else 'FAIL'} ({tests_s} s)"},
]
for name in ("kernels.json", "knn.json"):
    path = pathlib.Path(out, name)
    rows += json.loads(path.read_text()) if path.exists() else [{"bench": name, "result": "missing"}]
keys = []
for row in rows:
    keys += [k for k in row if k not in keys]
fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
print(f"\n## gpu-check on {torch.cuda.get_device_name()} ({total_s} s)\n")
print("| " + " | ".join(keys) + " |")
print("|" + "---|" * len(keys))
for row in rows:
    print("| " + " | ".join(fmt(row.get(k, "")) for k in keys) + " |")
PY
exit "$tests_rc"
