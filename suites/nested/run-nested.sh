#!/usr/bin/env bash
# run-nested.sh: the second backend. Runs hvprobe inside a Linux guest under QEMU TCG whose
# CPU emulates AMD SVM with nested paging, so hvprobe tests kvm_amd there, and brings the
# results file back to results/runs/<time>-<pid>-nested-kvm_amd.json.
#
#   suites/nested/run-nested.sh [hvprobe run arguments...]     (or: make run-nested ARGS=...)
#   e.g. suites/nested/run-nested.sh --filter cpu::boot
#
# Arguments go to `hvprobe run` inside the guest (--json, --results-dir and --kvm are the
# runner's own). Environment:
#   HVPROBE_BIN      the hvprobe to run (default target/release/hvprobe; `make build`)
#   NESTED_CACHE     kernel, initramfs and per-run logs (default target/nested)
#   NESTED_OUT       where the results file goes (default results/runs)
#   NESTED_TIMEOUT   limit of one QEMU run in seconds, boot to power-off (default 600)
#   NESTED_STALL     end QEMU when the guest shows no progress for this long (default 180)
#   NESTED_RETRIES   QEMU runs again this many times after QEMU itself crashed (default 1)
#   NESTED_CONSOLE   1: stream the guest's console here while it runs (default 1)
#   NESTED_KERNEL_PKG  the Debian kernel package (default: what linux-image-amd64 depends on)
#   NESTED_MEM, NESTED_SMP  guest memory and CPUs (default 4G, 2)
#
# Exit status: 0 a valid results file came back (whatever hvprobe's verdicts: failing
# cases are hvprobe's exit 1, reported, not an error of this runner); 2 bad arguments;
# 3 setup failed (packages, kernel, initramfs); 4 QEMU crashed; 5 the guest stalled or
# ran out of time; 6 the guest ended without a results file.
#
# Runs as root on Debian 12 (it installs what is missing with apt-get). The kernel is
# Debian's, unpacked into the cache, never installed into /boot. QEMU runs with
# -accel tcg,thread=single: thread=multi hangs the guest inside KVM ioctls.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/suites/nested"
# Paths given in the environment are relative to where the runner was started; the
# defaults are in the repository.
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac }
HVPROBE_BIN=$(abs "${HVPROBE_BIN:-$ROOT/target/release/hvprobe}")
NESTED_CACHE=$(abs "${NESTED_CACHE:-$ROOT/target/nested}")
NESTED_OUT=$(abs "${NESTED_OUT:-$ROOT/results/runs}")
cd "$ROOT"
NESTED_TIMEOUT=${NESTED_TIMEOUT:-600}
NESTED_STALL=${NESTED_STALL:-180}
NESTED_RETRIES=${NESTED_RETRIES:-1}
NESTED_CONSOLE=${NESTED_CONSOLE:-1}
NESTED_KERNEL_PKG=${NESTED_KERNEL_PKG:-}
NESTED_MEM=${NESTED_MEM:-4G}
NESTED_SMP=${NESTED_SMP:-2}

# The modules the guest loads, in dependency order (modprobe --show-depends); kvm_amd
# gets nested=1. cpuid gives /dev/cpu/N/cpuid, to show what the L1 CPU reports.
SHARE_MODULES=(virtio_pci 9pnet_virtio 9p)
KVM_MODULES=(kvm_amd cpuid)

T_START=$(date +%s.%N)
say() { printf '==> %s\n' "$*"; }
warn() { printf '==> warning: %s\n' "$*" >&2; }
die() {
    local code=$1
    shift
    printf '==> run-nested: error: %s\n' "$*" >&2
    exit "$code"
}
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

for a in "$@"; do
    case $a in
    -h | --help)
        usage
        exit 0
        ;;
    --json | --json=* | --results-dir | --results-dir=* | --kvm | --kvm=*)
        die 2 "$a is set by the runner (the results come back to \$NESTED_OUT=$NESTED_OUT)"
        ;;
    *$'\n'*) die 2 "an argument holds a newline: $a" ;;
    esac
done
for v in NESTED_TIMEOUT NESTED_STALL NESTED_RETRIES NESTED_SMP; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die 2 "$v must be a whole number, not '${!v}'"
done
[[ $NESTED_TIMEOUT -gt 0 ]] || die 2 "NESTED_TIMEOUT must be positive"

# ---- 1. packages ---------------------------------------------------------------------
APT_UPDATED=
apt_update() {
    if [[ -z $APT_UPDATED ]]; then
        say "apt-get update"
        timeout 300 apt-get update -qq || die 3 "apt-get update failed"
        APT_UPDATED=1
    fi
}
static_busybox() { [[ -x $1 ]] && ! ldd "$1" >/dev/null 2>&1; }

t=$(date +%s.%N)
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v cpio >/dev/null || missing+=(cpio)
{ command -v depmod && command -v modprobe; } >/dev/null || missing+=(kmod)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die 3 "missing ${missing[*]} and no apt-get to install them"
    [[ $(id -u) = 0 ]] || die 3 "missing ${missing[*]}: run as root (it installs them with apt-get)"
    apt_update
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
        die 3 "apt-get install ${missing[*]} failed"
fi
T_PACKAGES=$(since "$t")

[[ -x $HVPROBE_BIN ]] || die 3 "no hvprobe at $HVPROBE_BIN: run \`make build\` first (or set HVPROBE_BIN)"

# ---- 2. the kernel: Debian's, unpacked once into the cache -----------------------------
t=$(date +%s.%N)
mkdir -p "$NESTED_CACHE"
CACHE=$(cd "$NESTED_CACHE" && pwd)
pkg_version() { apt-cache show --no-all-versions "$1" 2>/dev/null | awk '/^Version:/ { print $2; exit }'; }
kernel_pkg() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }'
}
KPKG=$NESTED_KERNEL_PKG
KVER_PKG=
if command -v apt-cache >/dev/null; then
    [[ -n $KPKG ]] || KPKG=$(kernel_pkg)
    if [[ -z $KPKG ]] && [[ $(id -u) = 0 ]]; then
        apt_update
        KPKG=$(kernel_pkg)
    fi
    [[ -z $KPKG ]] || KVER_PKG=$(pkg_version "$KPKG")
    if [[ -n $KPKG && -z $KVER_PKG && $(id -u) = 0 ]]; then
        apt_update
        KVER_PKG=$(pkg_version "$KPKG")
    fi
fi
if [[ -n $KPKG && -n $KVER_PKG ]]; then
    KDIR="$CACHE/kernel/${KPKG}_${KVER_PKG}"
else
    # No package index: reuse the newest kernel already in the cache.
    KDIR=$(ls -1dt "$CACHE"/kernel/*/ 2>/dev/null | while read -r d; do
        [[ -f $d/.complete ]] && { echo "${d%/}"; break; }
    done || true)
    [[ -n $KDIR ]] || die 3 "cannot tell which kernel package to fetch (apt-cache depends linux-image-amd64)" \
        "and none is cached in $CACHE/kernel"
    warn "no package index: using the cached kernel $(basename "$KDIR")"
fi
if [[ ! -f $KDIR/.complete ]]; then
    say "fetching $KPKG $KVER_PKG into $KDIR"
    rm -rf "$KDIR" "$KDIR.tmp"
    mkdir -p "$KDIR.tmp/deb"
    (cd "$KDIR.tmp/deb" && timeout 600 apt-get download -q -o APT::Sandbox::User=root "$KPKG=$KVER_PKG") ||
        die 3 "apt-get download $KPKG=$KVER_PKG failed"
    dpkg-deb -x "$KDIR.tmp"/deb/*.deb "$KDIR.tmp/root" || die 3 "dpkg-deb -x failed"
    rm -rf "$KDIR.tmp/deb"
    mv "$KDIR.tmp" "$KDIR"
    KREL=$(ls -1 "$KDIR/root/lib/modules" | head -n 1)
    depmod -b "$KDIR/root" "$KREL" || die 3 "depmod failed"
    touch "$KDIR/.complete"
fi
KREL=$(ls -1 "$KDIR/root/lib/modules" | head -n 1)
VMLINUZ="$KDIR/root/boot/vmlinuz-$KREL"
[[ -n $KREL && -f $VMLINUZ ]] || die 3 "the cached kernel in $KDIR is incomplete: delete it and run again"

# The guest's busybox: the host's when it is busybox-static; else busybox-static's, unpacked
# into the cache (installing it would replace the host's busybox package).
BUSYBOX=/bin/busybox
if ! static_busybox "$BUSYBOX"; then
    BUSYBOX="$CACHE/busybox-static/bin/busybox"
    if ! static_busybox "$BUSYBOX"; then
        say "fetching busybox-static into $CACHE/busybox-static"
        rm -rf "$CACHE/busybox-static" "$CACHE/busybox-static.tmp"
        mkdir -p "$CACHE/busybox-static.tmp"
        (cd "$CACHE/busybox-static.tmp" && timeout 300 apt-get download -q -o APT::Sandbox::User=root busybox-static) ||
            die 3 "apt-get download busybox-static failed"
        dpkg-deb -x "$CACHE"/busybox-static.tmp/*.deb "$CACHE/busybox-static" || die 3 "dpkg-deb -x busybox-static failed"
        rm -rf "$CACHE/busybox-static.tmp"
        static_busybox "$BUSYBOX" || die 3 "busybox-static has no static $BUSYBOX"
    fi
fi
T_KERNEL=$(since "$t")

# ---- 3. the initramfs: a cached base (busybox, modules, init) + hvprobe and its libraries
t=$(date +%s.%N)
module_files() { # the .ko files, dependencies first, each once
    local m
    for m in "$@"; do
        modprobe -d "$KDIR/root" -S "$KREL" --show-depends "$m" || die 3 "no module $m in $KREL"
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }'
}
mapfile -t share_kos < <(module_files "${SHARE_MODULES[@]}")
mapfile -t kvm_kos < <(module_files "${KVM_MODULES[@]}")
((${#share_kos[@]} && ${#kvm_kos[@]})) || die 3 "modprobe found no modules for ${SHARE_MODULES[*]} ${KVM_MODULES[*]} in $KDIR"
key=$({
    echo "$KDIR"
    printf '%s\n' "${share_kos[@]}" "${kvm_kos[@]}"
    sha256sum "$BUSYBOX" "$HERE/guest-init.sh"
} | sha256sum | cut -c1-16)
BASE="$CACHE/initramfs/base-$KREL-$key.cpio"
if [[ ! -f $BASE ]]; then
    say "building the initramfs base $(basename "$BASE")"
    stage=$(mktemp -d "$CACHE/stage.XXXXXX")
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,mnt,run,etc/nested,lib/modules/nested}
    cp "$BUSYBOX" "$stage/bin/busybox"
    install -m 755 "$HERE/guest-init.sh" "$stage/init"
    mknod -m 600 "$stage/dev/console" c 5 1 2>/dev/null || true
    : >"$stage/etc/nested/modules-share"
    : >"$stage/etc/nested/modules-kvm"
    for ko in "${share_kos[@]}"; do
        cp "$ko" "$stage/lib/modules/nested/"
        basename "$ko" >>"$stage/etc/nested/modules-share"
    done
    for ko in "${kvm_kos[@]}"; do
        [[ " ${share_kos[*]} " == *" $ko "* ]] && continue
        cp "$ko" "$stage/lib/modules/nested/"
        b=$(basename "$ko")
        case $b in kvm-amd.ko | kvm_amd.ko) b="$b nested=1" ;; esac
        echo "$b" >>"$stage/etc/nested/modules-kvm"
    done
    mkdir -p "$CACHE/initramfs"
    (cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$BASE.tmp"
    mv "$BASE.tmp" "$BASE"
    rm -rf "$stage"
    # Older bases of other kernels or init scripts are dead weight.
    find "$CACHE/initramfs" -name 'base-*.cpio' ! -name "$(basename "$BASE")" -delete
fi

RUN="$CACHE/runs/$(date -u +%Y%m%dT%H%M%S)-$$"
mkdir -p "$RUN"
# Keep the last 10 runs' logs.
ls -1d "$CACHE"/runs/*/ 2>/dev/null | sort | head -n -10 | xargs -r rm -rf
stage="$RUN/stage"
mkdir -p "$stage/usr/bin"
cp "$HVPROBE_BIN" "$stage/usr/bin/hvprobe"
# glibc and the other libraries, at the paths the binary looks for them.
while read -r lib; do
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
done < <(ldd "$HVPROBE_BIN" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$RUN/hvprobe.cpio"
rm -rf "$stage"
cat "$BASE" "$RUN/hvprobe.cpio" >"$RUN/initrd.cpio"
rm -f "$RUN/hvprobe.cpio"
T_INITRD=$(since "$t")
say "kernel $KREL ($(basename "$KDIR")), initramfs $(du -m "$RUN/initrd.cpio" | cut -f1) MB;" \
    "setup ${T_PACKAGES} s, kernel ${T_KERNEL} s, initramfs ${T_INITRD} s"

# ---- 4. QEMU -------------------------------------------------------------------------
QPID=
TAILPID=
cleanup() {
    if [[ -n $QPID ]] && kill -0 "$QPID" 2>/dev/null; then
        kill -TERM "$QPID" 2>/dev/null || true
        sleep 2
        kill -KILL -- "-$QPID" 2>/dev/null || true
    fi
    if [[ -n $TAILPID ]]; then kill "$TAILPID" 2>/dev/null || true; fi
    rm -f "$RUN/initrd.cpio" # 15 MB a run; the logs stay
}
trap cleanup EXIT
trap 'cleanup; die 130 "interrupted"' INT TERM

# Console lines for a terminal: no carriage returns, no firmware terminal escapes, and
# no raw bytes (hvprobe quotes what a failing guest wrote to its console), cut at 300
# characters (the full text stays in the log and the results file).
SCRUB=$'s/\r$//; s/\x1b\\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g; s/[^[:print:]\t]/./g; s/^\\(.\\{300\\}\\).*/\\1 [...]/'

# The guest's progress: its console until the share is mounted, then only what init and
# hvprobe write to the share (a soft-locked kernel keeps printing to the console).
progress() {
    local s=$1/share
    local f n=0
    if [[ -f $s/markers ]]; then
        for f in "$s/markers" "$s/run.log"; do
            [[ -f $f ]] && n=$((n + $(stat -c %s "$f" 2>/dev/null || echo 0)))
        done
    else
        n=$(stat -c %s "$1/console.log" 2>/dev/null || echo 0)
    fi
    echo "$n"
}

# Sets Q_RC, Q_SECS and Q_END (done | stalled | timeout | crashed).
boot() {
    local dir=$1 log=$1/console.log
    rm -rf "$dir/share"
    mkdir -p "$dir/share"
    : >"$log"
    : >"$dir/share/args"
    for a in "${ARGS[@]+"${ARGS[@]}"}"; do printf '%s\n' "$a" >>"$dir/share/args"; done
    # What the platform runs on (the results and the profile's platform_cpu_vendor read
    # it): this machine's CPU vendor and model, and the emulator's version.
    printf '%s|%s|%s\n' "$(sed -n 's/^vendor_id[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
        "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)" \
        "$(qemu-system-x86_64 --version | head -n 1)" >"$dir/share/platform-runs-on"
    local t0 last now size seen=-1
    t0=$(date +%s)
    last=$t0
    timeout --kill-after=15 "$NESTED_TIMEOUT" qemu-system-x86_64 \
        -accel tcg,thread=single -cpu EPYC,+svm,+npt -smp "$NESTED_SMP" -m "$NESTED_MEM" \
        -nodefaults -no-user-config -nographic -no-reboot -monitor none -serial "file:$log" \
        -kernel "$VMLINUZ" -initrd "$RUN/initrd.cpio" \
        -append "console=ttyS0 panic=-1 quiet" \
        -virtfs "local,path=$dir/share,mount_tag=share,security_model=none" \
        </dev/null >"$dir/qemu.out" 2>&1 &
    QPID=$!
    if [[ $NESTED_CONSOLE = 1 ]]; then
        tail -n +1 -F --pid="$QPID" "$log" 2>/dev/null | LC_ALL=C sed -u -e "$SCRUB" -e 's/^/  | /' &
        TAILPID=$!
    fi
    Q_END=done
    while kill -0 "$QPID" 2>/dev/null; do
        sleep 1
        now=$(date +%s)
        size=$(progress "$dir")
        if [[ $size != "$seen" ]]; then
            seen=$size
            last=$now
        elif ((now - last >= NESTED_STALL)); then
            Q_END=stalled
            kill -TERM "$QPID" 2>/dev/null || true
            break
        fi
    done
    Q_RC=0
    wait "$QPID" || Q_RC=$?
    QPID=
    Q_SECS=$(($(date +%s) - t0))
    if [[ -n $TAILPID ]]; then
        wait "$TAILPID" 2>/dev/null || true
        TAILPID=
    fi
    if [[ $Q_END = done ]]; then
        if ((Q_RC == 124)); then
            Q_END=timeout
        elif ((Q_RC > 128)); then
            Q_END=crashed
        fi
    fi
}

last_lines() {
    echo "--- last console lines ($1/console.log):"
    tail -n "${2:-25}" "$1/console.log" | LC_ALL=C sed -e "$SCRUB" -e 's/^/  | /' | awk 1
    # QEMU's warnings about EPYC features TCG lacks come at every start: not news.
    if grep -qv "TCG doesn't support requested feature" "$1/qemu.out" 2>/dev/null; then
        echo "--- QEMU said:"
        grep -v "TCG doesn't support requested feature" "$1/qemu.out" | tail -n 10 | sed 's/^/  | /'
    fi
}

valid_results() { # a results file hvprobe itself can read
    [[ -s $1/share/results.json ]] && "$HVPROBE_BIN" export "$1/share/results.json" --format ktap >/dev/null 2>&1
}

ARGS=("$@")
attempt=0
while :; do
    attempt=$((attempt + 1))
    dir="$RUN/boot$attempt"
    mkdir -p "$dir"
    say "booting the nested guest (attempt $attempt; limit ${NESTED_TIMEOUT} s, stall ${NESTED_STALL} s);" \
        "console: $dir/console.log"
    boot "$dir"
    if [[ $Q_END = crashed ]] && ! valid_results "$dir"; then
        sig=$((Q_RC - 128))
        echo "==> QEMU crashed (signal $sig$( [[ $sig = 11 ]] && echo ", SIGSEGV")) after $Q_SECS s"
        last_lines "$dir"
        if ((attempt <= NESTED_RETRIES)); then
            say "retrying: QEMU itself crashed, not the guest (attempt $((attempt + 1)) of $((NESTED_RETRIES + 1)))"
            continue
        fi
        die 4 "QEMU crashed (signal $sig) after $Q_SECS s on every one of $attempt attempts; logs in $RUN"
    fi
    break
done

case $Q_END in
stalled)
    echo "==> the nested guest stalled: no progress for ${NESTED_STALL} s (QEMU ended after $Q_SECS s);" \
        "last console lines:"
    last_lines "$dir" 40
    die 5 "the nested guest stalled; logs in $dir"
    ;;
timeout)
    echo "==> the nested guest stalled: no end after ${NESTED_TIMEOUT} s; last console lines:"
    last_lines "$dir" 40
    die 5 "the nested guest ran out of time (NESTED_TIMEOUT=${NESTED_TIMEOUT}); logs in $dir"
    ;;
crashed)
    warn "QEMU crashed (signal $((Q_RC - 128))) after $Q_SECS s, but after the results were written"
    ;;
esac
if [[ $Q_END = done && $Q_RC -ne 0 ]]; then
    warn "QEMU exited with status $Q_RC after $Q_SECS s"
fi

if ! valid_results "$dir"; then
    if [[ -s $dir/share/guest-error ]]; then
        why="the guest could not run hvprobe: $(cat "$dir/share/guest-error")"
    elif [[ -s $dir/share/rc ]]; then
        why="hvprobe run ended with exit $(cat "$dir/share/rc") without a valid results file"
        [[ -s $dir/share/run.log ]] && tail -n 15 "$dir/share/run.log" | sed 's/^/  | /'
    elif [[ -f $dir/share/markers ]]; then
        why="the guest ended before hvprobe finished (kernel panic or oops?)"
    elif grep -q 'HVPROBE-NESTED' "$dir/console.log"; then
        why="the guest ended before mounting the share"
    else
        why="the guest never reached its init (QEMU exit $Q_RC)"
    fi
    echo "==> no results came back after $Q_SECS s: $why"
    last_lines "$dir" 40
    die 6 "$why; logs in $dir"
fi

mkdir -p "$NESTED_OUT"
out="$NESTED_OUT/$(date -u +%Y-%m-%dT%H%M%S.%NZ)-$$-nested-kvm_amd.json"
cp "$dir/share/results.json" "$out.tmp"
mv "$out.tmp" "$out"
rc=$(cat "$dir/share/rc" 2>/dev/null || echo unknown)

echo
say "hvprobe's summary (inside the nested guest):"
sed -n '/^area /,$p' "$dir/share/run.log" | grep -v '^results: ' | sed 's/^/  /'
case $rc in
0) verdict="no case failed" ;;
1) verdict="cases failed: see the list above and the results file" ;;
*) verdict="unexpected" ;;
esac
say "hvprobe run exit $rc ($verdict)"
say "QEMU ran ${Q_SECS} s (attempt $attempt); whole runner $(since "$T_START") s; logs in $dir"
say "results: $out"
