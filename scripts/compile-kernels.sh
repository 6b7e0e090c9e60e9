#!/usr/bin/env bash
# Compiles every CUDA kernel of lorax_core.kernels (compile only: no GPU needed) and fails on any
# compiler error. Installs the CUDA compiler wheels matching torch's CUDA version when no nvcc is
# found; the loader then points CUDA_HOME at a folder of links to them (docs/kernels.md).
#
# Usage: bash scripts/compile-kernels.sh [--clean]   (--clean: empty the build cache first)
# Environment: TORCH_CUDA_ARCH_LIST (default: the visible GPUs, or 9.0 without one),
# LORAX_KERNELS_CACHE (build cache, default ~/.cache/lorax_core/kernels), MAX_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."

cuda=$(python -c "import torch; print(torch.version.cuda or '')")
if [[ -z "$cuda" ]]; then
  echo "compile-kernels: this torch has no CUDA support (torch.version.cuda is None)" >&2
  exit 1
fi
major=${cuda%%.*}
minor=${cuda#*.}
minor=${minor%%.*}

# The compiler wheels (nvcc, its NVVM backend and the CRT headers) and ninja, when missing.
if ! command -v nvcc >/dev/null && [[ -z "${CUDA_HOME:-}" ]] &&
  ! python -c "import sys, pathlib, sysconfig; root = pathlib.Path(sysconfig.get_paths()['purelib']) / 'nvidia' / 'cu$major' / 'bin' / 'nvcc'; sys.exit(0 if root.is_file() else 1)"; then
  python -m pip install --quiet "nvidia-cuda-nvcc==$major.$minor.*" "nvidia-nvvm==$major.$minor.*" \
    "nvidia-cuda-crt==$major.$minor.*"
fi
python -c "import ninja" 2>/dev/null || python -m pip install --quiet ninja

if [[ "${1:-}" == "--clean" ]]; then
  python -c "from lorax_core.kernels._loader import build_dir; import shutil; shutil.rmtree(build_dir(), ignore_errors=True)"
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
python -m lorax_core.kernels
