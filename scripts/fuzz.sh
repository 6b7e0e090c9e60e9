#!/usr/bin/env bash
# Builds the cargo-fuzz targets of rust/fuzz (libFuzzer, nightly toolchain), replays every
# saved regression input and seed, then fuzzes each target for a bounded time. Fails on any
# crash, panic, timeout or out-of-memory; the failing input is left in
# rust/fuzz/artifacts/<target>/ (add it to rust/fuzz/regressions/<target>/ with the fix).
#
#   bash scripts/fuzz.sh --ci               # CI: installs what is missing, every target 75 s
#   bash scripts/fuzz.sh --time 1800 knn    # one target for 30 min (AddressSanitizer)
#   bash scripts/fuzz.sh --replay           # only replay the saved inputs
#
# Options: --time S (seconds per target), --sanitizer address|none (default address; --ci
# uses none), --install (install the nightly toolchain, minimal profile, and cargo-fuzz when
# missing; implied by --ci). The toolchain is $FUZZ_TOOLCHAIN (default nightly).
#
# --ci fuzzes from the seeds into a fresh corpus, so a run does not depend on earlier ones,
# and builds without a sanitizer: rust/core contains no unsafe code (#![forbid(unsafe_code)]),
# so AddressSanitizer only adds build time there; integer overflow and slice bounds still
# panic (debug assertions). Longer campaigns keep AddressSanitizer, which also watches the
# dependencies' SIMD kernels, and grow rust/fuzz/corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

toolchain="${FUZZ_TOOLCHAIN:-nightly}"
seconds=60
sanitizer=address
replay_only=0
install=0
ci=0
targets=()
while (($#)); do
    case "$1" in
        --ci) ci=1; seconds=75; sanitizer=none; install=1 ;;
        --time) seconds="$2"; shift ;;
        --sanitizer) sanitizer="$2"; shift ;;
        --install) install=1 ;;
        --replay) replay_only=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done
start=$SECONDS

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    if ((install)); then
        echo "== installing the $toolchain toolchain (minimal profile)"
        rustup toolchain install "$toolchain" --profile minimal
    else
        echo "fuzz.sh: needs the $toolchain toolchain (rerun with --install," \
            "or: rustup toolchain install $toolchain --profile minimal)" >&2
        exit 1
    fi
fi
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    if ((install)); then
        echo "== installing cargo-fuzz"
        cargo install cargo-fuzz@^0.13 --locked
    else
        echo "fuzz.sh: needs cargo-fuzz (rerun with --install," \
            "or: cargo install cargo-fuzz@^0.13 --locked)" >&2
        exit 1
    fi
fi
fuzz=(cargo "+$toolchain" fuzz)

fuzz_dir=rust/fuzz
out="$fuzz_dir/target/x86_64-unknown-linux-gnu/release"
# Release build with debug assertions, so integer overflow and slice bounds panic too.
build=(build --fuzz-dir "$fuzz_dir" --debug-assertions --sanitizer "$sanitizer")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir "$fuzz_dir")
    "${fuzz[@]}" "${build[@]}"
else
    for t in "${targets[@]}"; do
        "${fuzz[@]}" "${build[@]}" "$t"
    done
fi
echo "== built ${#targets[@]} targets (sanitizer: $sanitizer) in $((SECONDS - start)) s"

for t in "${targets[@]}"; do
    mapfile -t saved < <(find "$fuzz_dir/regressions/$t" "$fuzz_dir/seeds/$t" -type f 2>/dev/null | sort)
    if ((${#saved[@]})); then
        echo "== $t: replaying ${#saved[@]} saved inputs"
        "$out/$t" -runs=1 "${saved[@]}" >/dev/null 2>"$fuzz_dir/target/replay-$t.log" || {
            cat "$fuzz_dir/target/replay-$t.log" >&2
            echo "fuzz.sh: $t fails on a saved input" >&2
            exit 1
        }
    fi
done
((replay_only)) && exit 0

if ((ci)); then
    corpus_root="$(mktemp -d)"
    trap 'rm -rf "$corpus_root"' EXIT
else
    corpus_root="$fuzz_dir/corpus"
fi
for t in "${targets[@]}"; do
    corpus="$corpus_root/$t"
    mkdir -p "$corpus" "$fuzz_dir/artifacts/$t"
    extra=()
    [[ -f "$fuzz_dir/$t.dict" ]] && extra+=("-dict=$fuzz_dir/$t.dict")
    log="$fuzz_dir/target/fuzz-$t.log"
    status=0
    "$out/$t" "$corpus" "$fuzz_dir/seeds/$t" \
        -max_total_time="$seconds" -max_len=4096 -timeout=20 -rss_limit_mb=2048 \
        -artifact_prefix="$fuzz_dir/artifacts/$t/" -print_final_stats=1 "${extra[@]}" \
        >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "== $t: ${execs:-?} executions in ${seconds} s, corpus $(find "$corpus" -type f | wc -l) inputs"
    grep -E '^(SUMMARY|Test unit written)|panicked' "$log" || true
    if ((status != 0)); then
        tail -n 40 "$log" >&2
        echo "fuzz.sh: $t found a failure (exit $status); input in $fuzz_dir/artifacts/$t/" >&2
        exit 1
    fi
done
echo "fuzz.sh: ${#targets[@]} targets clean in $((SECONDS - start)) s"
