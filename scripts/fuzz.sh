#!/usr/bin/env bash
# Builds the cargo-fuzz targets of rust/fuzz (libFuzzer, nightly toolchain), replays every
# saved regression input, then fuzzes each target for a bounded time. Fails on any crash,
# panic, timeout or out-of-memory; the failing input is left in rust/fuzz/artifacts/<target>/.
#
#   bash scripts/fuzz.sh --ci               # CI: every target for 60 s
#   bash scripts/fuzz.sh --time 1800 knn    # one target for 30 min
#   bash scripts/fuzz.sh --replay           # only replay the regressions
#
# Needs `rustup toolchain install nightly` and `cargo install cargo-fuzz --locked`.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
replay_only=0
targets=()
while (($#)); do
    case "$1" in
        --ci) seconds=60 ;;
        --time) seconds="$2"; shift ;;
        --replay) replay_only=1 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1") ;;
    esac
    shift
done

fuzz_dir=rust/fuzz
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs the nightly toolchain and cargo-fuzz" \
        "(rustup toolchain install nightly; cargo install cargo-fuzz --locked)" >&2
    exit 1
fi
# Release build with debug assertions, so integer overflow and slice bounds panic too.
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir")
    cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" --debug-assertions
else
    for t in "${targets[@]}"; do
        cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" --debug-assertions "$t"
    done
fi

for t in "${targets[@]}"; do
    bin="$fuzz_dir/target/x86_64-unknown-linux-gnu/release/$t"
    mapfile -t saved < <(find "$fuzz_dir/regressions/$t" "$fuzz_dir/seeds/$t" -type f 2>/dev/null | sort)
    if ((${#saved[@]})); then
        echo "== $t: replaying ${#saved[@]} saved inputs"
        "$bin" -runs=1 "${saved[@]}" >/dev/null 2>"$fuzz_dir/target/replay-$t.log" || {
            cat "$fuzz_dir/target/replay-$t.log" >&2
            echo "fuzz.sh: $t fails on a saved input" >&2
            exit 1
        }
    fi
done
((replay_only)) && exit 0

for t in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$t"
    mkdir -p "$corpus" "$fuzz_dir/artifacts/$t"
    extra=()
    [[ -f "$fuzz_dir/$t.dict" ]] && extra+=("-dict=$fuzz_dir/$t.dict")
    echo "== $t: fuzzing for ${seconds} s"
    log="$fuzz_dir/target/fuzz-$t.log"
    status=0
    "$fuzz_dir/target/x86_64-unknown-linux-gnu/release/$t" "$corpus" "$fuzz_dir/seeds/$t" \
        -max_total_time="$seconds" -max_len=4096 -timeout=20 -rss_limit_mb=2048 \
        -artifact_prefix="$fuzz_dir/artifacts/$t/" -print_final_stats=1 "${extra[@]}" \
        >"$log" 2>&1 || status=$?
    grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|SUMMARY|Test unit written)|panicked' \
        "$log" || true
    if ((status != 0)); then
        tail -n 40 "$log" >&2
        echo "fuzz.sh: $t found a failure (exit $status); input in $fuzz_dir/artifacts/$t/" >&2
        exit 1
    fi
done
echo "fuzz.sh: ${#targets[@]} targets clean"
