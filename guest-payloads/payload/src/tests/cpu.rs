//! The `cpu` area: boot state, CPUID, MSRs, exceptions, privilege levels, the watchdog.

use hvprobe_rt::abi::{self, proto::service};
use hvprobe_rt::cpu::{self, Cpuid};
use hvprobe_rt::exception::{self, armed_rip};
use hvprobe_rt::{catch, check, check_eq, check_exception, check_values, metric, paging, test_case};

/// The CPUID entry the host set with KVM_SET_CPUID2, or `None` if it set none.
pub fn cpuid_as_set(leaf: u32, subleaf: u32) -> Option<Cpuid> {
    let args = |half| [leaf as u64, subleaf as u64, half, 0];
    let low = hvprobe_rt::proto::service(service::CPUID_AS_SET, args(0)).ok()?;
    let high = hvprobe_rt::proto::service(service::CPUID_AS_SET, args(1)).ok()?;
    Some(Cpuid { eax: low as u32, ebx: (low >> 32) as u32, ecx: high as u32, edx: (high >> 32) as u32 })
}

/// Register `reg` of (leaf, subleaf) in the table the host set (what KVM offered, less
/// the case's own clears), 0 where the host set no such leaf.
pub fn table_reg(leaf: u32, subleaf: u32, reg: u32) -> u32 {
    cpuid_as_set(leaf, subleaf).map_or(0, |c| c.reg(reg))
}

/// RDMSR of `msr` under `catch!`: the value, or the exception it raised.
pub fn try_rdmsr(msr: u32) -> Result<u64, exception::Exception> {
    let (mut lo, mut hi) = (0u32, 0u32);
    match catch!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi) {
        None => Ok(u64::from(hi) << 32 | u64::from(lo)),
        Some(e) => Err(e),
    }
}

/// WRMSR of `value` to `msr` under `catch!`: the exception it raised, if any.
pub fn try_wrmsr(msr: u32, value: u64) -> Option<exception::Exception> {
    catch!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32)
}

/// Calls `f(arg)` at CPL3 through the trampoline, or at CPL0 under `catch!` (see
/// `catch_call!` for what a fault inside `f` may leave), and returns what it raised.
pub fn call_at(cpl3: bool, f: extern "C" fn(u64), arg: u64) -> Option<exception::Exception> {
    if cpl3 { hvprobe_rt::user::call_at_cpl3(f, arg) } else { hvprobe_rt::catch_call!(f as usize, arg) }
}

/// Runs `body` with `bits` set in CR0 (TS, EM: how x87, MMX and SSE instructions fault),
/// and puts CR0 back.
pub fn with_cr0<R>(bits: u64, body: impl FnOnce() -> R) -> R {
    let cr0 = cpu::read_cr0();
    // SAFETY: the callers set only TS or EM, which change how FPU instructions fault.
    unsafe { cpu::write_cr0(cr0 | bits) };
    let r = body();
    // SAFETY: as above.
    unsafe { cpu::write_cr0(cr0) };
    r
}

use x86::msr::IA32_EFER as MSR_EFER;

/// Writes each MSR and checks it reads back the value. The caller makes sure the values
/// take no effect that matters to the test.
pub fn check_msr_roundtrips(cases: &[(u32, u64)]) {
    for &(msr, value) in cases {
        // SAFETY: forwarded to the caller, as above.
        let back = unsafe {
            cpu::wrmsr(msr, value);
            cpu::rdmsr(msr)
        };
        check_eq!(back, value, "MSR {:#x}", msr);
    }
}

/// The CPU's linear-address width, CPUID.80000008H:EAX[15:8]: 48, or 57 where it
/// supports 5-level paging. An address is canonical when bits 63 down to the
/// most-significant implemented bit are all equal (SDM Vol. 1 3.3.7.1; APM Vol. 2 5.3.1,
/// LinAddrSize).
pub fn linear_address_bits() -> u32 {
    (cpu::cpuid(0x8000_0008, 0).eax >> 8) & 0xff
}

/// WRMSR of a non-canonical address to `msr` (called `name` in messages) raises #GP(0)
/// (SDM Vol. 2B WRMSR), for two addresses: the lowest non-canonical one at the CPU's own
/// linear-address width (bit 47 alone where it is 48, bit 56 alone where it is 57: a CPU
/// that supports 5-level paging checks these MSRs against 57 bits even with CR4.LA57
/// clear), and bit 63 alone, non-canonical at every width.
pub fn check_msr_refuses_noncanonical(msr: u32, name: &str) {
    let bits = linear_address_bits();
    check!((48..=57).contains(&bits), "CPUID.80000008H:EAX[15:8] reports a linear-address width of {} bits", bits);
    for value in [1u64 << (bits - 1), 1 << 63] {
        let e = catch!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32);
        check!(e.is_some(), "WRMSR of {:#x} to {} ({}-bit linear addresses) raised no exception", value, name, bits);
        check_exception!(e, exception::GP, Some(0));
    }
}

test_case! {
    /// Long mode at CPL0 as the harness built it: EFER.LMA, CR0.PG and PE, CR4.PAE, and CS
    /// the 64-bit code selector (SDM Vol. 3A, 10.8.5).
    name = "cpu::boot::long64", mode = Long64, path = Hw;
    fn boot_long64() {
        // SAFETY: EFER exists on every 64-bit CPU; reading it has no side effects.
        let efer = unsafe { cpu::rdmsr(MSR_EFER) };
        check!(efer & (1 << 10) != 0, "EFER.LMA clear: {:#x}", efer);
        check_eq!(cpu::read_cr0() & 0x8000_0001, 0x8000_0001);
        check_eq!(cpu::read_cr4() & (1 << 5), 1 << 5);
        check_eq!(cpu::read_cs(), abi::selector::CODE64);
        hvprobe_rt::print!("long mode, EFER {:#x}\n", efer);
    }
}

test_case! {
    /// Long mode at CPL3: CS is the user code selector (RPL 3) and RFLAGS.IOPL is 3, so the
    /// guest reaches its ports without a trap into its own kernel.
    name = "cpu::boot::user64", mode = User64, path = Hw;
    fn boot_user64() {
        check_eq!(cpu::read_cs(), abi::selector::USER_CODE64);
        check_eq!((cpu::read_rflags() >> 12) & 3, 3);
    }
}

fn vendor_of(r: Cpuid) -> [u8; 12] {
    cpu::vendor_bytes([r.ebx, r.edx, r.ecx])
}

test_case! {
    /// CPUID leaf 0 returns the maximum leaf and vendor string the host set with
    /// KVM_SET_CPUID2 (KVM API 4.46; SDM Vol. 2A, CPUID). The host hook lowers the maximum
    /// leaves below any real CPU's (abi::cpuid_removed), so the host's own leaf 0 leaking
    /// through would show.
    name = "cpu::cpuid_vendor::long64", mode = Long64, path = Full, flags = abi::flags::HOST_HOOK;
    fn cpuid_vendor() {
        let set = cpuid_as_set(0, 0);
        check!(set.is_some(), "the host set no CPUID leaf 0");
        let start = cpu::rdtsc();
        let got = cpu::cpuid(0, 0);
        metric("cpuid", "cycles", cpu::rdtsc() - start);
        let set = set.unwrap();
        check_eq!(got.eax, set.eax, "maximum basic leaf");
        check_eq!(vendor_of(got), vendor_of(set), "vendor string");
    }
}

test_case! {
    /// CPUID at CPL3 is intercepted just the same (SDM Vol. 3C, 26.1.2: CPUID always exits).
    name = "cpu::cpuid_vendor::user64", mode = User64, path = Full, flags = abi::flags::HOST_HOOK;
    entry = cpuid_vendor
}

test_case! {
    /// CPUID leaf 1 reads back as the host set it, except for the bits the SDM defines as
    /// reflecting state: ECX.OSXSAVE[27] mirrors CR4.OSXSAVE and EDX.APIC[9] mirrors
    /// IA32_APIC_BASE.EN (SDM Vol. 2A, CPUID, Table 3-10/3-11).
    name = "cpu::cpuid_leaf1::long64", mode = Long64, path = Full;
    fn cpuid_leaf1() {
        let set = cpuid_as_set(1, 0);
        check!(set.is_some(), "the host set no CPUID leaf 1");
        let set = set.unwrap();
        let osxsave = (cpu::read_cr4() >> 18) & 1;
        // SAFETY: IA32_APIC_BASE is architectural on every CPU with CPUID.1:EDX.APIC.
        let apic_enabled = (unsafe { cpu::rdmsr(0x1b) } >> 11) & 1;
        let expected_ecx = (set.ecx & !(1 << 27)) | ((osxsave as u32) << 27);
        let expected_edx = (set.edx & !(1 << 9)) | ((apic_enabled as u32) << 9);
        let got = cpu::cpuid(1, 0);
        check_eq!(got.eax, set.eax, "family/model/stepping");
        check_eq!(got.ebx, set.ebx, "brand/CLFLUSH/count/initial APIC ID");
        check_eq!(got.ecx, expected_ecx, "feature flags ECX");
        check_eq!(got.edx, expected_edx, "feature flags EDX");
        check!(got.ecx & (1 << 31) != 0, "CPUID.1:ECX[31] (hypervisor present) is clear");
    }
}

test_case! {
    /// The KVM signature leaf 0x40000000 reads "KVMKVMKVM\0\0\0" and the maximum
    /// hypervisor leaf as set (Documentation/virt/kvm/x86/cpuid.rst).
    name = "cpu::cpuid_kvm_signature::long64", mode = Long64, path = Para,
        requires = abi::requires::KVM_PV;
    fn cpuid_kvm_signature() {
        let got = cpu::cpuid(0x4000_0000, 0);
        check_eq!(cpu::vendor_bytes([got.ebx, got.ecx, got.edx]), *b"KVMKVMKVM\0\0\0");
        check_eq!(Some(got.eax), cpuid_as_set(0x4000_0000, 0).map(|c| c.eax), "max hypervisor leaf");
    }
}

test_case! {
    /// Features the host hook removed from CPUID.1:ECX in the table (KVM_SET_CPUID2)
    /// stay absent in the guest (api.rst 4.46: the table defines the vCPU's CPUID). The
    /// removed set includes features every x86-64 host offers, so a table that is
    /// ignored shows on every host CPU model.
    name = "cpu::cpuid_removed_feature::long64", mode = Long64, path = Full,
        cpuid_clear = [(1, 0, ECX, abi::cpuid_removed::LEAF1_ECX)];
    fn cpuid_removed_feature() {
        const REMOVED: u32 = abi::cpuid_removed::LEAF1_ECX;
        check_eq!(cpuid_as_set(1, 0).map(|c| c.ecx & REMOVED), Some(0), "hook did not run");
        let leaked = cpu::cpuid(1, 0).ecx & REMOVED;
        check_values!(leaked == 0, 0, leaked, "CPUID.1:ECX still advertises features removed from the table");
    }
}

/// An MSR index in no architectural, AMD, Intel or KVM range.
const MSR_UNIMPLEMENTED: u32 = 0xdead_beef;

test_case! {
    /// RDMSR and WRMSR of an unimplemented MSR raise #GP(0) (SDM Vol. 2B, RDMSR/WRMSR).
    name = "cpu::msr_unimplemented_gp::long64", mode = Long64, path = Full;
    fn msr_unimplemented_gp() {
        let e = catch!("rdmsr", in("ecx") MSR_UNIMPLEMENTED, out("eax") _, out("edx") _);
        let e = check_exception!(e, exception::GP, Some(0));
        check_eq!(e.rip, armed_rip(), "#GP is a fault: saved RIP is the RDMSR");
        let e = catch!("wrmsr", in("ecx") MSR_UNIMPLEMENTED, in("eax") 0, in("edx") 0);
        check_exception!(e, exception::GP, Some(0));
    }
}

test_case! {
    /// Writable MSRs hold what was written: KERNEL_GS_BASE, STAR, LSTAR, SFMASK
    /// (SDM Vol. 4, Table 2-2).
    name = "cpu::msr_roundtrip::long64", mode = Long64, path = Full;
    fn msr_roundtrip() {
        let cases: [(u32, u64); 4] = [
            (0xc000_0102, 0xffff_8000_1234_5000),
            (0xc000_0081, 0x0023_0010_0000_0000),
            (0xc000_0082, 0xffff_ffff_8100_0000),
            (0xc000_0084, 0x0004_7700),
        ];
        // They only take effect on SYSCALL/SWAPGS, which the test never runs.
        check_msr_roundtrips(&cases);
    }
}

test_case! {
    /// WRMSR of a non-canonical address to IA32_KERNEL_GS_BASE raises #GP(0)
    /// (SDM Vol. 2B, WRMSR), non-canonical at the CPU's linear-address width.
    name = "cpu::msr_noncanonical_gp::long64", mode = Long64, path = Full;
    fn msr_noncanonical_gp() {
        check_msr_refuses_noncanonical(0xc000_0102, "IA32_KERNEL_GS_BASE");
    }
}

test_case! {
    /// UD2 raises #UD, no error code, saved RIP at the UD2 (SDM Vol. 2B, UD).
    name = "cpu::exc_ud::long64", mode = Long64, path = Hw;
    fn exc_ud() {
        let e = check_exception!(catch!("ud2"), exception::UD, None);
        check_eq!(e.rip, armed_rip(), "#UD is a fault: saved RIP is the UD2");
    }
}

test_case! {
    /// UD2 at CPL3 raises #UD into the guest's own IDT handler at CPL0.
    name = "cpu::exc_ud::user64", mode = User64, path = Hw;
    entry = exc_ud
}

test_case! {
    /// DIV by zero raises #DE with the saved RIP at the DIV (SDM Vol. 3A, 6.15, Interrupt 0).
    name = "cpu::exc_de::long64", mode = Long64, path = Hw;
    fn exc_de() {
        let e = catch!("div {0}", in(reg) 0u64, inout("rax") 1u64 => _, inout("rdx") 0u64 => _);
        let e = check_exception!(e, exception::DE, None);
        check_eq!(e.rip, armed_rip());
    }
}

test_case! {
    /// Loading DS with a selector beyond the GDT limit raises #GP with the selector as
    /// error code (SDM Vol. 3A, 6.13 and 6.15, Interrupt 13).
    name = "cpu::exc_gp_selector::long64", mode = Long64, path = Hw;
    fn exc_gp_selector() {
        let selector: u16 = (abi::selector::GDT_ENTRIES as u16 + 1) * 8;
        let e = catch!("mov ds, {0:x}", in(reg) selector);
        check_exception!(e, exception::GP, Some(selector as u64));
    }
}

test_case! {
    /// A load from a non-canonical address raises #GP(0) (SDM Vol. 3A, 3.3.7.1).
    name = "cpu::exc_gp_noncanonical::long64", mode = Long64, path = Hw;
    fn exc_gp_noncanonical() {
        let e = catch!("mov {0}, [{0}]", inout(reg) 0x8000_0000_0000_0000u64 => _);
        check_exception!(e, exception::GP, Some(0));
    }
}

test_case! {
    /// Access to a not-present page raises #PF with CR2 = the address and error code P=0,
    /// W/R as the access, U/S=0 (SDM Vol. 3A, 4.7).
    name = "cpu::exc_pf_not_present::long64", mode = Long64, path = Hw;
    fn exc_pf_not_present() {
        let addr = paging::scratch_page() + 0x123;
        paging::with_pte(addr, |pte| pte & !paging::PRESENT, || {
            let e = catch!("mov {0:l}, [{0}]", inout(reg) addr => _);
            let e = check_exception!(e, exception::PF, Some(0));
            check_eq!(e.cr2, Some(addr), "CR2 is the faulting linear address");
            check_eq!(e.rip, armed_rip());
            let e = catch!("mov byte ptr [{0}], 1", in(reg) addr);
            let e = check_exception!(e, exception::PF, Some(2));
            check_eq!(e.cr2, Some(addr));
        });
        check_eq!(catch!("mov byte ptr [{0}], 1", in(reg) addr), None, "page is back");
    }
}

test_case! {
    /// With CR0.WP set a CPL0 write to a read-only page raises #PF(P=1, W=1); with WP clear
    /// the same write succeeds (SDM Vol. 3A, 4.6.1).
    name = "cpu::exc_pf_write_protect::long64", mode = Long64, path = Hw;
    fn exc_pf_write_protect() {
        let addr = paging::scratch_page() + 0x800;
        let cr0 = cpu::read_cr0();
        paging::with_pte(addr, |pte| pte & !paging::WRITABLE, || {
            // SAFETY: toggling CR0.WP (bit 16) leaves the mode intact.
            unsafe { cpu::write_cr0(cr0 | 1 << 16) };
            let e = catch!("mov byte ptr [{0}], 7", in(reg) addr);
            let e = check_exception!(e, exception::PF, Some(3));
            check_eq!(e.cr2, Some(addr));
            // SAFETY: as above.
            unsafe { cpu::write_cr0(cr0 & !(1 << 16)) };
            check_eq!(catch!("mov byte ptr [{0}], 7", in(reg) addr), None, "CR0.WP=0 allows the write");
        });
        // SAFETY: restores the harness's CR0.
        unsafe { cpu::write_cr0(cr0) };
    }
}

test_case! {
    /// INT3 raises #BP as a trap: no error code, saved RIP after the INT3
    /// (SDM Vol. 3A, 6.15, Interrupt 3).
    name = "cpu::exc_bp::long64", mode = Long64, path = Hw;
    fn exc_bp() {
        let start = cpu::rdtsc();
        let e = catch!("int3");
        metric("exception_roundtrip", "cycles", cpu::rdtsc() - start);
        let e = check_exception!(e, exception::BP, None);
        check_eq!(e.rip, armed_rip() + 1, "#BP is a trap: saved RIP follows the INT3");
    }
}

test_case! {
    /// INT3 at CPL3 through a DPL3 gate reaches the guest's CPL0 handler and returns.
    name = "cpu::exc_bp::user64", mode = User64, path = Hw;
    entry = exc_bp
}

fn rdtsc_monotonic_n(n: u32) {
    let mut last = cpu::rdtsc();
    let first = last;
    for _ in 0..n {
        let now = cpu::rdtsc();
        check!(now >= last, "TSC went backwards: {:#x} after {:#x}", now, last);
        last = now;
    }
    metric("rdtsc", "cycles", (last - first) / n as u64);
}

test_case! {
    /// RDTSC never goes backwards on one vCPU (SDM Vol. 3B, 18.17).
    name = "cpu::rdtsc_monotonic::long64", mode = Long64, path = Hw;
    fn rdtsc_monotonic() {
        rdtsc_monotonic_n(200);
    }
}

test_case! {
    /// RDTSC at CPL3 never goes backwards either.
    name = "cpu::rdtsc_monotonic::user64", mode = User64, path = Hw;
    entry = rdtsc_monotonic
}

test_case! {
    /// Spins forever on purpose: the watchdog must stop it and report `timeout` within
    /// its limit plus one second.
    name = "cpu::watchdog_spin::long64", mode = Long64, path = Hw,
        timeout_ms = 200, flags = abi::flags::EXPECT_TIMEOUT;
    fn watchdog_spin() {
        loop {
            core::hint::spin_loop();
        }
    }
}

test_case! {
    /// The same spin at CPL3, where PVM runs guest code natively rather than emulating it.
    name = "cpu::watchdog_spin::user64", mode = User64, path = Hw,
        timeout_ms = 200, flags = abi::flags::EXPECT_TIMEOUT;
    entry = watchdog_spin
}

// CPL3 variants: on PVM these execute natively, the long64 ones through the emulator.

test_case! {
    /// DIV by zero raises #DE at CPL3.
    name = "cpu::exc_de::user64", mode = User64, path = Hw;
    entry = exc_de
}

test_case! {
    /// A load with a selector beyond the GDT limit raises #GP(selector) at CPL3.
    name = "cpu::exc_gp_selector::user64", mode = User64, path = Hw;
    entry = exc_gp_selector
}

test_case! {
    /// A non-canonical load raises #GP(0) at CPL3.
    name = "cpu::exc_gp_noncanonical::user64", mode = User64, path = Hw;
    entry = exc_gp_noncanonical
}

/// Bits KVM derives from vCPU state rather than from the table (KVM API 4.46 and the SDM):
/// CPUID.1:ECX.OSXSAVE and EDX.APIC, CPUID.7.0:ECX.OSPKE, and the XSAVE sizes in 0xD.
fn dynamic_bits(leaf: u32, subleaf: u32) -> [u32; 4] {
    match (leaf, subleaf) {
        (1, _) => [0, 0xff00_0000, 1 << 27, 1 << 9],
        (7, 0) => [0, 0, 1 << 4, 0],
        (0xd, 0) | (0xd, 1) => [0, u32::MAX, 0, 0],
        _ => [0; 4],
    }
}

test_case! {
    /// Every CPUID leaf and subleaf the host set with KVM_SET_CPUID2 reads back as set,
    /// apart from the bits that reflect vCPU state (KVM API 4.46).
    name = "cpu::cpuid_all_leaves::long64", mode = Long64, path = Full;
    fn cpuid_all_leaves() {
        let (mut checked, mut differing, mut first) = (0u32, 0u32, None);
        for i in 0.. {
            let Ok(entry) = hvprobe_rt::proto::service(service::CPUID_ENTRY, [i, 0, 0, 0]) else { break };
            let (leaf, subleaf) = (entry as u32, (entry >> 32) as u32);
            let Some(set) = cpuid_as_set(leaf, subleaf) else { continue };
            let got = cpu::cpuid(leaf, subleaf);
            let mask = dynamic_bits(leaf, subleaf);
            let regs = |c: Cpuid| [c.eax & !mask[0], c.ebx & !mask[1], c.ecx & !mask[2], c.edx & !mask[3]];
            checked += 1;
            if regs(got) != regs(set) {
                differing += 1;
                if first.is_none() {
                    first = Some((leaf, subleaf, got, set));
                }
            }
        }
        hvprobe_rt::metric("leaves_checked", "count", checked as u64);
        check!(checked > 10, "only {} CPUID entries to check", checked);
        if let Some((leaf, subleaf, got, set)) = first {
            check!(
                false,
                "{} of {} CPUID leaves differ from the table; first: leaf {:#x}.{} reads {:x?}, set {:x?}",
                differing,
                checked,
                leaf,
                subleaf,
                got,
                set
            );
        }
    }
}

test_case! {
    /// The maximum basic and extended leaves (CPUID.0:EAX, CPUID.80000000H:EAX) are the
    /// highest leaves in the table the host set (SDM Vol. 2A, CPUID). The host hook cuts
    /// the table below any real CPU's maxima, so the host's own leaves would show.
    name = "cpu::cpuid_max_leaf::long64", mode = Long64, path = Full, flags = abi::flags::HOST_HOOK;
    fn cpuid_max_leaf() {
        let (mut basic, mut extended) = (0u32, 0u32);
        for i in 0.. {
            let Ok(entry) = hvprobe_rt::proto::service(service::CPUID_ENTRY, [i, 0, 0, 0]) else { break };
            let leaf = entry as u32;
            if leaf < 0x4000_0000 {
                basic = basic.max(leaf);
            } else if leaf >= 0x8000_0000 {
                extended = extended.max(leaf);
            }
        }
        check_eq!(cpu::cpuid(0, 0).eax, basic, "maximum basic leaf");
        check_eq!(cpu::cpuid(0x8000_0000, 0).eax, extended, "maximum extended leaf");
    }
}

test_case! {
    /// The KVM signature leaf reads the same from CPL3.
    name = "cpu::cpuid_kvm_signature::user64", mode = User64, path = Para,
        requires = abi::requires::KVM_PV;
    entry = cpuid_kvm_signature
}

test_case! {
    /// CPUID.1:ECX[31], "hypervisor present", is set as the host set it, read from CPL3
    /// (SDM Vol. 2A, CPUID: reserved for hypervisor use, set by KVM).
    name = "cpu::cpuid_hypervisor_bit::user64", mode = User64, path = Full;
    fn cpuid_hypervisor_bit() {
        check_eq!(cpu::cpuid(1, 0).ecx >> 31, 1, "CPUID.1:ECX.hypervisor");
        check_eq!(cpuid_as_set(1, 0).map(|c| c.ecx >> 31), Some(1), "the host set it");
    }
}

test_case! {
    /// CPUID.1:ECX[31] reads from CPL3 as the table holds it, where the host hook set it to
    /// the inverse of the host CPU's own bit (set in a VM, clear on bare metal): the bit is
    /// the table's, so a leak of the host's CPUID shows on any host (KVM API 4.46).
    name = "cpu::cpuid_hypervisor_bit_flipped::user64", mode = User64, path = Full, flags = abi::flags::HOST_HOOK;
    fn cpuid_hypervisor_bit_flipped() {
        let set = cpuid_as_set(1, 0).map(|c| c.ecx >> 31);
        check!(set.is_some(), "the host set no CPUID leaf 1");
        check_eq!(cpu::cpuid(1, 0).ecx >> 31, set.unwrap_or(0), "CPUID.1:ECX.hypervisor as the table holds it");
    }
}

test_case! {
    /// The maximum basic and extended leaves read the same from CPL3.
    name = "cpu::cpuid_max_leaf::user64", mode = User64, path = Full, flags = abi::flags::HOST_HOOK;
    entry = cpuid_max_leaf
}
