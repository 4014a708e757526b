#!/usr/bin/env bash
# kvm-unit-tests' x86/vmexit beside hvprobe's matching benchmarks, on this host, in one
# run: `make peer-vmexit`. Builds kvm-unit-tests' vmexit.flat once (target/peer), runs it
# under QEMU with KVM on /dev/kvm, runs `hvprobe bench` on the operations that match, and
# prints both in guest TSC cycles per operation, side by side.
#
# kvm-unit-tests times the whole loop iteration (its loop and call overhead included);
# hvprobe subtracts its empty loop (the `baseline` column). QEMU is the VMM on the left,
# hvprobe's harness on the right: in-kernel paths (CPUID, CR8, an in-kernel port) compare
# the hypervisor itself, exits to userspace (inl_from_qemu) compare the VMMs too.
#
# Environment: KUT_SRC (a kvm-unit-tests checkout; default target/peer/kvm-unit-tests,
# cloned from KUT_GIT), QEMU (default qemu-system-x86_64), PEER_TIMEOUT (seconds for
# each kvm-unit-tests operation, each in its own QEMU, default 60: an operation that
# hangs the guest, as a CPL0 hypercall does on PVM, is reported as such), HVPROBE (the
# hvprobe binary).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/target/peer
src=${KUT_SRC:-$out/kvm-unit-tests}
git_url=${KUT_GIT:-https://gitlab.com/kvm-unit-tests/kvm-unit-tests.git}
qemu=${QEMU:-qemu-system-x86_64}
hvprobe=${HVPROBE:-$root/target/release/hvprobe}
timeout_s=${PEER_TIMEOUT:-60}
mkdir -p "$out"

# kvm-unit-tests test name -> hvprobe benchmark (the same guest operation).
pairs=(
  "cpuid bench::cpuid::long64"
  "vmcall bench::hypercall::long64"
  "mov_from_cr8 bench::cr8_read::long64"
  "mov_to_cr8 bench::cr8_write::long64"
  "inl_from_qemu bench::pio_in_user::long64"
  "inl_from_kernel bench::pio_in_kernel::long64"
  "outl_to_kernel bench::pio_out_kernel::long64"
  "self_ipi_sti_nop bench::self_ipi::xapic"
  "x2apic_self_ipi_sti_nop bench::self_ipi::x2apic"
  "ipi bench::ipi::xapic"
  "tscdeadline_immed bench::tsc_deadline_arm::long64"
  "wr_kernel_gs_base bench::wrmsr_kernel_gs_base::long64"
)

missing() {
  echo "peer-vmexit: $1" >&2
  exit 1
}

command -v "$qemu" > /dev/null || missing "QEMU ($qemu) is not installed: apt-get install qemu-system-x86"
command -v gcc > /dev/null || missing "gcc is not installed (kvm-unit-tests builds with it): apt-get install gcc"
[ -x "$hvprobe" ] || missing "no hvprobe binary at $hvprobe: run make build"
[ -r /dev/kvm ] && [ -w /dev/kvm ] || missing "/dev/kvm is not usable by this user"

if [ ! -f "$src/x86/vmexit.c" ]; then
  echo "==> cloning kvm-unit-tests from $git_url into $src"
  # The project's GitHub mirror when GitLab cannot be reached.
  git clone -q --depth 1 "$git_url" "$src" \
    || git clone -q --depth 1 https://github.com/kvm-unit-tests/kvm-unit-tests.git "$src" \
    || missing "kvm-unit-tests could not be cloned from $git_url or its GitHub mirror; set KUT_SRC to a checkout"
fi
if [ ! -f "$src/x86/vmexit.flat" ]; then
  echo "==> building kvm-unit-tests' x86/vmexit.flat"
  (cd "$src" && ./configure > "$out/kut-configure.log" 2>&1 && make -j2 x86/vmexit.flat > "$out/kut-make.log" 2>&1) \
    || missing "building kvm-unit-tests failed: see $out/kut-configure.log and $out/kut-make.log"
fi

names=()
filters=()
for p in "${pairs[@]}"; do
  names+=("${p%% *}")
  filters+=(-f "${p#* }")
done

echo "==> kvm-unit-tests x86/vmexit.flat under $qemu with KVM, one QEMU per operation"
kut_log=$out/kut-vmexit.log
: > "$kut_log"
for name in "${names[@]}"; do
  status=0
  (cd "$src" && timeout "$timeout_s" env QEMU="$(command -v "$qemu")" ./x86/run x86/vmexit.flat -smp 2 \
    -append "$name") > "$out/kut-$name.log" 2>&1 || status=$?
  cat "$out/kut-$name.log" >> "$kut_log"
  if [ "$status" = 124 ]; then
    echo "$name (hung: no result within ${timeout_s} s)" >> "$kut_log"
  fi
  line=$(grep -E "^$name( |$)" "$out/kut-$name.log" | head -1 || true)
  if [ "$status" != 0 ]; then line="$line (status $status)"; fi
  echo "    $name: ${line:-no output}"
done

echo "==> hvprobe bench on the matching operations"
bench_json=$out/hvprobe-bench.json
"$hvprobe" bench --exact "${filters[@]}" --json "$bench_json" > "$out/hvprobe-bench.log" 2>&1 \
  || echo "peer-vmexit: hvprobe bench ended with status $? (log: $out/hvprobe-bench.log)" >&2

python3 - "$kut_log" "$bench_json" "${pairs[@]}" <<'PY'
import json, re, sys
kut_log, bench_json, pairs = sys.argv[1], sys.argv[2], [p.split(' ', 1) for p in sys.argv[3:]]
kut = {}
notes = {}
text = open(kut_log, errors='replace').read()
for kname, _ in pairs:
    # The self-IPI operations print a 0 (without a newline) for each IPI not taken in
    # the STI window before the result line, so the name may follow a run of digits.
    m = re.search(r'(?m)(\d*)(?<![a-z_])' + kname + r' (\d+)\s*$', text)
    if m:
        kut[kname] = int(m.group(2))
        if m.group(1):
            notes[kname] = f"{len(m.group(1))} IPIs missed the window"
    m = re.search(r'(?m)^' + kname + r' \((skipped|hung)', text)
    if m:
        kut[kname] = m.group(1)
try:
    results = json.load(open(bench_json))
    bench = {b['name']: b for b in results.get('benchmarks', []) if b.get('unit') == 'cycles'}
    host = results.get('host', {})
    print(f"host {host.get('hostname', '?')}: backend {host.get('backend', '?')}, kernel {host.get('kernel', '?')}")
except (OSError, ValueError) as e:
    bench = {}
    print(f"no hvprobe results ({e})")
print(f"{'kvm-unit-tests':<26}{'cycles':>10}   {'hvprobe':<38}{'cycles':>10}{'spread':>9}{'baseline':>10}")
for kname, bname in pairs:
    k = kut.get(kname, 'no output')
    b = bench.get(bname)
    bc = f"{b['median']:.0f}" if b else 'no result'
    sp = f"{b['spread']:.0f}" if b else ''
    base = f"{b.get('baseline') or 0:.0f}" if b else ''
    note = f"  ({notes[kname]})" if kname in notes else ''
    print(f"{kname:<26}{k!s:>10}   {bname:<38}{bc:>10}{sp:>9}{base:>10}{note}")
print("kvm-unit-tests: cycles per loop iteration, its loop included; hvprobe: median cycles per")
print("operation with the empty loop (baseline) subtracted, spread = MAD. Logs under target/peer.")
PY
