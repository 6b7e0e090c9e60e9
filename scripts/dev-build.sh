#!/usr/bin/env bash
# Rebuilds the Rust extension into the editable install (release profile).
# Serialised with a lock so that parallel rebuilds do not collide.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock "${TMPDIR:-/tmp}/lorax_core-build.lock" \
    python -m pip install --no-build-isolation --no-deps -q -e .
