#!/usr/bin/env python3
"""Writes the generated seed inputs of the fuzz corpora (suites/fuzz/corpus/<target>/seed-*):
small valid inputs of each parser, from which AFL++ mutates. Rerun after an ABI change; the
grown corpora are committed beside the seeds."""
import json, os, re, struct, sys

root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
corpus = os.path.join(root, "suites", "fuzz", "corpus")
abi = open(os.path.join(root, "guest-payloads", "abi", "src", "lib.rs")).read()
ABI_VERSION = int(re.search(r"ABI_VERSION: u32 = (\d+);", abi).group(1))


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def fixed(s, n):
    return s.encode().ljust(n, b"\0")


def elf(tests):
    """An x86-64 ET_EXEC with one PT_LOAD at 1 MiB holding the vector stubs and entries,
    a .hvprobe.boot header and a .hvprobe.tests table of `tests` (name, mode, flags)."""
    base, memsz = 0x100000, 0x2000
    boot = struct.pack("<IIQQ", int.from_bytes(b"HVBH", "little"), ABI_VERSION, base, base + 0x1000)
    table = b""
    for i, (name, mode, flags) in enumerate(tests):
        table += struct.pack("<IBBH", int.from_bytes(b"HVTD", "little"), mode, 1, 0)
        table += fixed(name, 96) + fixed("tests/seed.rs", 64)
        # line, timeout_ms, requires, flags, migrate, quirks_off, cpuid_clear[4], entry
        clears = struct.pack("<IIII", 7, 0, 3, 1 << 28) + bytes(16 * 3)
        migrate = 1 if i == 0 else 0  # the first case asks to be restored (hvprobe_abi::migrate::RESTORE)
        table += struct.pack("<IIQIIQ", 10 + i, 0, 0, flags, migrate, 0) + clears + struct.pack("<Q", base + 0x1000 + 16 * i)
    shstr = b"\0.hvprobe.boot\0.hvprobe.tests\0.shstrtab\0"
    seg = b"\xf4" * 0x1000 + b"\xc3" * 0x100
    ehsize, phsize, shsize = 64, 56, 64
    off_seg = ehsize + phsize
    off_boot = off_seg + len(seg)
    off_tests = off_boot + len(boot)
    off_shstr = off_tests + len(table)
    off_sh = off_shstr + len(shstr)
    eh = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    eh += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, base + 0x1000, ehsize, off_sh, 0, ehsize, phsize, 1, shsize, 4, 3)
    ph = struct.pack("<IIQQQQQQ", 1, 5, off_seg, base, base, len(seg), memsz, 0x1000)
    def sh(name, typ, addr, off, size):
        return struct.pack("<IIQQQQIIQQ", name, typ, 2 if addr else 0, addr, off, size, 0, 0, 1, 0)
    shs = sh(0, 0, 0, 0, 0)
    shs += sh(1, 1, base + 0x1800, off_boot, len(boot))
    shs += sh(15, 1, base + 0x1900, off_tests, len(table))
    shs += sh(30, 3, 0, off_shstr, len(shstr))
    return eh + ph + seg + boot + table + shstr + shs


put("payload", "two-cases", elf([("cpu::seed::long64", 3, 0), ("hostile::seed::user64", 4, 1 << 5)]))
put("payload", "bench", elf([("bench::seed::long64", 3, 1 << 2)]))

# Protocol: 8 bytes of message address, then guest RAM from 0.
def msg_log(text):
    body = struct.pack("<IIQQ", int.from_bytes(b"HVPM", "little"), 1, 0x100, len(text))
    ram = body.ljust(0x100, b"\0") + text
    return struct.pack("<Q", 0) + ram

def msg_verdict():
    body = struct.pack("<IIIIQQQQIIQQQ", int.from_bytes(b"HVPM", "little"), 2, 1, 42, 0x100, 7, 0x110, 5,
                       3, 0, 1, 2, 0x120)
    return struct.pack("<Q", 0) + body.ljust(0x100, b"\0") + b"cpu.rs\0\0\0\0\0\0\0\0\0\0" + b"wrong"

def msg_metric():
    body = struct.pack("<IIQQQQQ", int.from_bytes(b"HVPM", "little"), 3, 0x100, 4, 0x110, 6, 1234)
    return struct.pack("<Q", 0) + body.ljust(0x100, b"\0") + b"cost".ljust(16, b"\0") + b"cycles"

def msg_service():
    body = struct.pack("<IIIIQQQQQ", int.from_bytes(b"HVPM", "little"), 4, 1, 0xffffffff, 5, 3, 0, 0, 0)
    return struct.pack("<Q", 0x40) + b"\0" * 0x40 + body

put("protocol", "log", msg_log(b"hello from the guest"))
put("protocol", "verdict", msg_verdict())
put("protocol", "metric", msg_metric())
put("protocol", "service", msg_service())

# The snapshot seeds (a real snapshot's header line, memory cut to a page) and the results
# seed (a real run of cpu::boot::*) were taken from real runs and are kept as committed.

# Profiles: the smallest ones in the tree, and one entry with every field.
for name in ["kvm_amd.toml", "kvm_intel.toml"]:
    put("profile", name, open(os.path.join(root, "suites", "expectations", name), "rb").read())
put("profile", "full-entry", """backend = "kvm_pvm"
[[deviation]]
test = "cpu::boot::long64"
end = "verdict"
insn_bytes = "0f 0b"
message = "wrong vector"
expected = 1
actual = 2
cpu_family = [0x19, 0x1a]
who = "kvm"
elsewhere = "passes on kvm_amd under qemu-tcg"
deviates_from = "SDM Vol. 3A 6.15"
""")
print("seeds written under", corpus, file=sys.stderr)
