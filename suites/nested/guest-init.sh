#!/bin/busybox sh
# PID 1 of the nested guest that run-nested.sh boots under QEMU TCG (an AMD CPU with SVM):
# loads kvm_amd, runs hvprobe against the guest's own /dev/kvm and leaves everything on
# the 9p share (tag "share"): markers, host.txt, host.json, run.log, results.json, rc,
# dmesg.txt, and guest-error when the run could not start. It never returns (PID 1
# exiting would panic the kernel): it ends with `poweroff -f`, which ends QEMU.
# Console lines "HVPROBE-NESTED: [uptime] ..." are the steps; the outer script quotes them.

/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /run /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/shm /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
hostname nested

SHARE=/mnt
shared=

up() { cut -d' ' -f1 /proc/uptime; }
say() {
    echo "HVPROBE-NESTED: [$(up)] $*"
    if [ -n "$shared" ]; then echo "[$(up)] $*" >>"$SHARE/markers"; fi
}
finish() {
    if [ -n "$shared" ]; then dmesg >"$SHARE/dmesg.txt" 2>&1; fi
    sync
    if [ -n "$shared" ]; then umount "$SHARE" 2>/dev/null; fi
    say "powering off"
    poweroff -f
    while :; do sleep 60; done
}
die() {
    say "ERROR: $*"
    if [ -n "$shared" ]; then echo "$*" >"$SHARE/guest-error"; fi
    finish
}
# insmod every module of a list ("file.ko [param=value]..." per line), in its order.
load() {
    while read -r ko params; do
        [ -n "$ko" ] || continue
        # shellcheck disable=SC2086 # params are words
        insmod "/lib/modules/nested/$ko" $params || die "insmod $ko $params failed"
    done <"$1"
}

say "init started, kernel $(uname -r)"

load /etc/nested/modules-share
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share "$SHARE" ||
    die "mounting the 9p share failed"
shared=1
say "share mounted"

grep -qw svm /proc/cpuinfo || die "the guest CPU has no svm flag (QEMU -cpu needs +svm)"
load /etc/nested/modules-kvm
[ -c /dev/kvm ] || die "no /dev/kvm after loading kvm_amd"
say "modules loaded: kvm_amd nested=$(cat /sys/module/kvm_amd/parameters/nested)" \
    "npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)"

# What the L1 guest sees of its CPU and of the hypervisor below it (QEMU TCG).
say "cpu: $(grep -m1 '^vendor_id' /proc/cpuinfo | cut -d: -f2-) /$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2-)"
if grep -qw hypervisor /proc/cpuinfo; then
    say "cpu flags: hypervisor flag set (CPUID.1:ECX[31])"
else
    say "cpu flags: no hypervisor flag"
fi
say "cpu svm flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(svm|npt|nrip_save|decodeassists|lbrv|svm_lock|tsc_scale|vmcb_clean|flushbyasid|pausefilter|pfthreshold|avic|v_vmsave_vmload|vgif|vnmi|x2avic)$' | tr '\n' ' ')"
hv=$(dmesg | grep -i 'hypervisor' | sed 's/^\[[^]]*\] //' | head -n 3)
say "dmesg hypervisor lines: ${hv:-(none)}"
dmesg | grep -iE 'SVM|kvm' | sed 's/^/  dmesg: /' | head -n 20
if [ -c /dev/cpu/0/cpuid ]; then
    for leaf in 0x40000000 0x40000001 0x8000000a; do
        say "CPUID $leaf (eax ebx ecx edx, raw bytes):"
        dd if=/dev/cpu/0/cpuid bs=16 count=1 skip=$((leaf)) iflag=skip_bytes 2>/dev/null |
            hexdump -C | head -n 1 | sed 's/^/  /'
    done
else
    say "no /dev/cpu/0/cpuid: CPUID leaves not shown"
fi

# The machine QEMU runs on, as the outer script saw it: "vendor|model|emulator version".
if [ -f "$SHARE/platform-runs-on" ]; then
    HVPROBE_PLATFORM_RUNS_ON=$(cat "$SHARE/platform-runs-on")
    export HVPROBE_PLATFORM_RUNS_ON
fi
hvprobe host >"$SHARE/host.txt" 2>&1 || say "hvprobe host failed"
grep -v '^ *KVM_CAP_' "$SHARE/host.txt" | sed 's/^/  /' # the capabilities are in host.json
hvprobe host --json >"$SHARE/host.json" 2>"$SHARE/host.err" || say "hvprobe host --json failed"

# The arguments for `hvprobe run`, one per line.
set --
if [ -f "$SHARE/args" ]; then
    while IFS= read -r a; do set -- "$@" "$a"; done <"$SHARE/args"
fi
cd /tmp || die "no /tmp"
say "running: hvprobe run --json $SHARE/results.json $*"
t0=$(up)
{
    hvprobe run --json "$SHARE/results.json" "$@"
    echo $? >/tmp/rc
} 2>&1 | tee "$SHARE/run.log"
rc=$(cat /tmp/rc 2>/dev/null || echo unknown)
echo "$rc" >"$SHARE/rc"
say "run exit $rc (started at ${t0} s)"
finish
