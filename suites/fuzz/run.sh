#!/usr/bin/env bash
# Coverage-guided fuzzing of hvprobe's parsers with AFL++ through cargo-afl (stable Rust).
#   suites/fuzz/run.sh [--execs N | --seconds S] [--keep-corpus] [TARGET...]
# Targets: payload protocol snapshot results profile (all by default). Each target runs
# until N executions (default 10,000,000) or S seconds; then its queue and the committed
# inputs, minimized by afl-cmin, become suites/fuzz/corpus/<target>/ beside the seeds,
# unless --keep-corpus. Exits 1 if any
# target found a crash or a hang, printing where the inputs are. `make fuzz` runs the full
# campaign, `make fuzz-smoke` (CI) 10 seconds per target.
set -euo pipefail
cd "$(dirname "$0")"

limit=(-E 10000000)
save=yes
base=out
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --execs) limit=(-E "$2"); shift 2 ;;
        --seconds) limit=(-V "$2"); shift 2 ;;
        --keep-corpus) save=no; base=out/smoke; shift ;;
        payload|protocol|snapshot|results|profile) targets+=("$1"); shift ;;
        *) echo "fuzz: unknown argument $1 (targets: payload protocol snapshot results profile)" >&2; exit 2 ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(payload protocol snapshot results profile)

if ! command -v cargo-afl >/dev/null 2>&1; then
    echo "fuzz: installing cargo-afl from crates.io (once)"
    cargo install cargo-afl --locked --quiet
fi
# Builds AFL++ for this toolchain once; says so and succeeds when it is already built.
cargo afl config --build >/dev/null 2>&1 || true
cargo afl build --release --quiet
# afl-cmin, from the AFL++ that cargo-afl built.
afl_bin="$(ls -d "${XDG_DATA_HOME:-$HOME/.local/share}"/afl.rs/rustc-*/afl.rs-*/afl/bin 2>/dev/null | tail -n 1)"

# No UI, no CPU binding or governor checks (shared machines), crashes kept even where the
# kernel's core_pattern pipes cores elsewhere.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
mkdir -p "$base"
found=0
for t in "${targets[@]}"; do
    out="$base/$t"
    rm -rf "$out"
    started=$(date +%s)
    cargo afl fuzz -i "corpus/$t" -o "$out" "${limit[@]}" "target/release/$t" >"$base/$t.log" 2>&1 || {
        tail -n 20 "$base/$t.log" >&2
        echo "fuzz: afl-fuzz failed on $t (log: suites/fuzz/$base/$t.log)" >&2
        exit 1
    }
    stat() { sed -n "s/^$1 *: //p" "$out/default/fuzzer_stats"; }
    crashes=$(stat saved_crashes)
    hangs=$(stat saved_hangs)
    echo "fuzz: $t: $(stat execs_done) executions in $(( $(date +%s) - started )) s ($(stat execs_per_sec)/s), corpus $(stat corpus_count), crashes $crashes, hangs $hangs"
    if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
        echo "fuzz: $t: inputs in suites/fuzz/$out/default/{crashes,hangs}" >&2
        found=1
        continue
    fi
    [ "$save" = yes ] || continue
    # Grow the committed corpus: the smallest set of AFL's queue and the committed inputs
    # that keeps every path (afl-cmin), named by content; the seeds stay as they are.
    all="$out/all"
    mkdir -p "$all"
    cp "$out"/default/queue/id* "$all"/
    find "corpus/$t" -type f ! -name 'seed-*' -exec cp {} "$all"/ \;
    AFL_PATH="$afl_bin" "$afl_bin/afl-cmin.awk" -i "$all" -o "$out/min" -- "target/release/$t" >"$base/$t.cmin.log" 2>&1
    find "corpus/$t" -type f ! -name 'seed-*' -delete
    for f in "$out"/min/*; do
        case "$(basename "$f")" in *orig:seed-*|seed-*) continue ;; esac
        cp "$f" "corpus/$t/$(sha1sum "$f" | cut -c1-16)"
    done
    echo "fuzz: $t: corpus now $(ls "corpus/$t" | wc -l) inputs"
done
exit $found
