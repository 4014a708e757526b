//! Features whose existence the vCPU's CPUID decides: MSRs, CR4 bits, EFER bits and XCR0
//! components. Each `*_absent` case clears the bits that enumerate the feature
//! (`cpuid_clear`, applied by the host before KVM_SET_CPUID2), checks that the table and
//! the guest's own CPUID no longer show them, then uses the feature and expects the
//! fault the manuals define for a processor without it: #GP(0) for RDMSR/WRMSR of an MSR
//! that does not exist (SDM Vol. 2B RDMSR/WRMSR; APM Vol. 3 RDMSR/WRMSR), #GP(0) for a
//! reserved CR4 or EFER bit (SDM Vol. 3A 2.5 and MOV CR; APM Vol. 2 3.1.3, 3.1.7), #GP(0)
//! for an XCR0 bit CPUID.(0DH,0):EAX does not list (SDM Vol. 2C XSETBV). Each `*_present`
//! twin checks the feature works where KVM offers it, and skips with the reason where
//! KVM_GET_SUPPORTED_CPUID lacks it.

use hvprobe_rt::abi::CpuidClear;
use hvprobe_rt::cpu;
use hvprobe_rt::exception;
use hvprobe_rt::{catch, check, check_eq, check_exception, skip, test_case};

use super::cpu::{table_reg, try_rdmsr, try_wrmsr};

/// The host cleared the bits from the table it set; a harness error otherwise. Whether
/// the guest's CPUID then shows them is `cpu::cpuid_reflects_clears`' question, so that a
/// hypervisor that leaks bits still has its behaviour checked here.
pub(super) fn check_cleared(leaf: u32, subleaf: u32, reg: u32, mask: u32) {
    let table = table_reg(leaf, subleaf, reg) & mask;
    check_eq!(table, 0, "the host left CPUID {:#x}.{} register {} bits {:#x} set", leaf, subleaf, reg, mask);
}

/// What the guest's CPUID shows of the bits the case's table cleared: all leaks in one
/// message (leaf, subleaf, register, bits), so one run names every one.
fn check_cpuid_hides(clears: &[(u32, u32, u32, u32); 4]) {
    let mut leaked = [0u32; 4];
    for (i, &(leaf, subleaf, reg, mask)) in clears.iter().enumerate() {
        check_cleared(leaf, subleaf, reg, mask);
        leaked[i] = cpu::cpuid(leaf, subleaf).reg(reg) & mask;
    }
    let names = ["EAX", "EBX", "ECX", "EDX"];
    let name = |i: usize| names[clears[i].2 as usize];
    check!(
        leaked == [0; 4],
        "CPUID shows bits the table cleared: {:#x}.{} {} {:#x}, {:#x}.{} {} {:#x}, {:#x}.{} {} {:#x}, {:#x}.{} {} {:#x}",
        clears[0].0,
        clears[0].1,
        name(0),
        leaked[0],
        clears[1].0,
        clears[1].1,
        name(1),
        leaked[1],
        clears[2].0,
        clears[2].1,
        name(2),
        leaked[2],
        clears[3].0,
        clears[3].1,
        name(3),
        leaked[3]
    );
}

/// The bits `cpu::cpuid_reflects_clears::*` clears: features the runtime never uses,
/// from the two leaves that enumerate most of them (SDM Vol. 2A CPUID, Tables 3-10, 3-11
/// and 3-8; APM Vol. 3 Appendix E.3.2, E.3.6).
const REFLECT_1_EDX: u32 = 1 << 7 | 1 << 11 | 1 << 12 | 1 << 14 | 1 << 16 | 1 << 24; // MCE SEP MTRR MCA PAT FXSR
const REFLECT_1_ECX: u32 = 1 << 15 | 1 << 17 | 1 << 24 | 1 << 28; // PDCM PCID TSC_DEADLINE AVX
const REFLECT_7_EBX: u32 = 1 << 0 | 1 << 1 | 1 << 3 | 1 << 7 | 1 << 20; // FSGSBASE TSC_ADJUST BMI1 SMEP SMAP
const REFLECT_7_ECX: u32 = 1 << 2 | 1 << 3 | 1 << 22; // UMIP PKU RDPID
const REFLECT: [(u32, u32, u32, u32); 4] = [
    (1, 0, CpuidClear::EDX, REFLECT_1_EDX),
    (1, 0, CpuidClear::ECX, REFLECT_1_ECX),
    (7, 0, CpuidClear::EBX, REFLECT_7_EBX),
    (7, 0, CpuidClear::ECX, REFLECT_7_ECX),
];

test_case! {
    /// CPUID at CPL0 answers from the table the VMM set: bits it cleared read 0 (api.rst
    /// 4.73 KVM_SET_CPUID2: "defines the vcpu responses to the cpuid instruction"). The
    /// message names the leaf and register whose bits leaked; the compared values are the
    /// bits.
    name = "cpu::cpuid_reflects_clears::long64", mode = Long64, path = Full,
        cpuid_clear = [(1, 0, EDX, REFLECT_1_EDX), (1, 0, ECX, REFLECT_1_ECX), (7, 0, EBX, REFLECT_7_EBX),
            (7, 0, ECX, REFLECT_7_ECX)];
    fn cpuid_reflects_clears() {
        check_cpuid_hides(&REFLECT);
    }
}

test_case! {
    /// As `::long64`, with CPUID executed at CPL3.
    name = "cpu::cpuid_reflects_clears::user64", mode = User64, path = Full,
        cpuid_clear = [(1, 0, EDX, REFLECT_1_EDX), (1, 0, ECX, REFLECT_1_ECX), (7, 0, EBX, REFLECT_7_EBX),
            (7, 0, ECX, REFLECT_7_ECX)];
    entry = cpuid_reflects_clears
}

/// Whether the table KVM offered (and the host set) has any of `mask`.
fn offered(leaf: u32, subleaf: u32, reg: u32, mask: u32) -> bool {
    table_reg(leaf, subleaf, reg) & mask != 0
}

/// RDMSR and WRMSR of `msr` (called `name` in messages, so that signatures hold no
/// number) both raise #GP(0).
pub(super) fn check_msr_absent(msr: u32, name: &str) {
    // The value read stays out of the message: it may be live (APERF, say).
    let read = try_rdmsr(msr).err();
    check!(read.is_some(), "RDMSR of {} raised no exception", name);
    check_exception!(read, exception::GP, Some(0));
    let write = try_wrmsr(msr, 0);
    check!(write.is_some(), "WRMSR of 0 to {} raised no exception", name);
    check_exception!(write, exception::GP, Some(0));
}

/// RDMSR of `msr` raises nothing and returns its value.
fn check_msr_readable(msr: u32) -> u64 {
    let read = try_rdmsr(msr);
    check!(read.is_ok(), "RDMSR of MSR {:#x} raised {:?}", msr, read.err().map(|e| e.vector));
    read.unwrap_or(0)
}

/// WRMSR of `value` to `msr` raises nothing.
fn check_msr_writable(msr: u32, value: u64) {
    let write = try_wrmsr(msr, value);
    check!(write.is_none(), "WRMSR of {:#x} to MSR {:#x} raised {:?}", value, msr, write.map(|e| e.vector));
}

/// One case per MSR: the bits that enumerate it cleared, RDMSR and WRMSR raise #GP(0).
macro_rules! msr_absent {
    ($($(#[$doc:meta])* $fn:ident: $name:literal, $msr:expr, $msr_name:literal,
        [$(($leaf:expr, $sub:expr, $reg:ident, $mask:expr)),+ $(,)?] $(, requires = $req:expr)?;)+) => {$(
        test_case! {
            $(#[$doc])*
            name = $name, mode = Long64, path = Full $(, requires = $req)?,
                cpuid_clear = [$(($leaf, $sub, $reg, $mask)),+];
            fn $fn() {
                $(check_cleared($leaf, $sub, CpuidClear::$reg, $mask);)+
                check_msr_absent($msr, $msr_name);
            }
        }
    )+};
}

msr_absent! {
    /// IA32_TSC_AUX (C000_0103h) exists if CPUID.80000001H:EDX[27] RDTSCP or
    /// CPUID.(7,0):ECX[22] RDPID is set (SDM Vol. 4 Table 2-2; APM Vol. 2 13.2.5).
    msr_tsc_aux_absent: "cpu::msr_tsc_aux_absent::long64", 0xc000_0103, "IA32_TSC_AUX",
        [(0x8000_0001, 0, EDX, 1 << 27), (7, 0, ECX, 1 << 22)];
    /// IA32_ARCH_CAPABILITIES (10Ah) exists if CPUID.(7,0):EDX[29] is set (SDM Vol. 4
    /// Table 2-2).
    msr_arch_capabilities_absent: "cpu::msr_arch_capabilities_absent::long64", 0x10a, "IA32_ARCH_CAPABILITIES", [(7, 0, EDX, 1 << 29)];
    /// IA32_TSX_CTRL (122h) exists if IA32_ARCH_CAPABILITIES[7] is set, so not at all
    /// without IA32_ARCH_CAPABILITIES (SDM Vol. 4 Table 2-2).
    msr_tsx_ctrl_absent: "cpu::msr_tsx_ctrl_absent::long64", 0x122, "IA32_TSX_CTRL", [(7, 0, EDX, 1 << 29)];
    /// IA32_PERF_CAPABILITIES (345h) exists if CPUID.01H:ECX[15] PDCM is set (SDM Vol. 4
    /// Table 2-2).
    msr_perf_capabilities_absent: "cpu::msr_perf_capabilities_absent::long64", 0x345, "IA32_PERF_CAPABILITIES", [(1, 0, ECX, 1 << 15)];
    /// IA32_XSS (DA0h) exists if CPUID.(0DH,1):EAX[3] XSAVES is set (SDM Vol. 4 Table 2-2;
    /// APM Vol. 2 11.5.2).
    msr_xss_absent: "cpu::msr_xss_absent::long64", 0xda0, "IA32_XSS", [(0xd, 1, EAX, 1 << 3)];
    /// IA32_XFD (1C4h) exists if CPUID.(0DH,1):EAX[4] XFD is set (SDM Vol. 4 Table 2-2).
    msr_xfd_absent: "cpu::msr_xfd_absent::long64", 0x1c4, "IA32_XFD", [(0xd, 1, EAX, 1 << 4)];
    /// IA32_XFD_ERR (1C5h): as IA32_XFD (SDM Vol. 4 Table 2-2).
    msr_xfd_err_absent: "cpu::msr_xfd_err_absent::long64", 0x1c5, "IA32_XFD_ERR", [(0xd, 1, EAX, 1 << 4)];
    /// IA32_UMWAIT_CONTROL (E1h) exists if CPUID.(7,0):ECX[5] WAITPKG is set (SDM Vol. 4
    /// Table 2-2).
    msr_umwait_control_absent: "cpu::msr_umwait_control_absent::long64", 0xe1, "IA32_UMWAIT_CONTROL", [(7, 0, ECX, 1 << 5)];
    /// IA32_TSC_ADJUST (3Bh) exists if CPUID.(7,0):EBX[1] is set (SDM Vol. 4 Table 2-2,
    /// Vol. 3B 18.17.3).
    msr_tsc_adjust_absent: "cpu::msr_tsc_adjust_absent::long64", 0x3b, "IA32_TSC_ADJUST", [(7, 0, EBX, 1 << 1)];
    /// IA32_TSC_DEADLINE (6E0h) exists if CPUID.01H:ECX[24] is set (SDM Vol. 4 Table 2-2,
    /// Vol. 3A 11.5.4.1), also with the local APIC present.
    msr_tsc_deadline_absent: "cpu::msr_tsc_deadline_absent::xapic", 0x6e0, "IA32_TSC_DEADLINE", [(1, 0, ECX, 1 << 24)],
        requires = hvprobe_rt::abi::requires::IRQCHIP;
    /// IA32_U_CET (6A0h) exists if CPUID.(7,0):ECX[7] CET_SS or EDX[20] CET_IBT is set
    /// (SDM Vol. 4 Table 2-2; APM Vol. 2 18.2).
    msr_u_cet_absent: "cpu::msr_u_cet_absent::long64", 0x6a0, "IA32_U_CET", [(7, 0, ECX, 1 << 7), (7, 0, EDX, 1 << 20)];
    /// IA32_S_CET (6A2h): as IA32_U_CET (SDM Vol. 4 Table 2-2).
    msr_s_cet_absent: "cpu::msr_s_cet_absent::long64", 0x6a2, "IA32_S_CET", [(7, 0, ECX, 1 << 7), (7, 0, EDX, 1 << 20)];
    /// IA32_PL0_SSP (6A4h) exists if CPUID.(7,0):ECX[7] CET_SS is set (SDM Vol. 4
    /// Table 2-2).
    msr_pl0_ssp_absent: "cpu::msr_pl0_ssp_absent::long64", 0x6a4, "IA32_PL0_SSP", [(7, 0, ECX, 1 << 7)];
    /// IA32_PKRS (6E1h) exists if CPUID.(7,0):ECX[31] PKS is set (SDM Vol. 4 Table 2-2).
    msr_pkrs_absent: "cpu::msr_pkrs_absent::long64", 0x6e1, "IA32_PKRS", [(7, 0, ECX, 1 << 31)];
    /// IA32_BNDCFGS (D90h) exists if CPUID.(7,0):EBX[14] MPX is set (SDM Vol. 4 Table 2-2).
    msr_bndcfgs_absent: "cpu::msr_bndcfgs_absent::long64", 0xd90, "IA32_BNDCFGS", [(7, 0, EBX, 1 << 14)];
    /// IA32_RTIT_CTL (570h) exists if CPUID.(7,0):EBX[25] Intel PT is set (SDM Vol. 4
    /// Table 2-2).
    msr_rtit_ctl_absent: "cpu::msr_rtit_ctl_absent::long64", 0x570, "IA32_RTIT_CTL", [(7, 0, EBX, 1 << 25)];
    /// IA32_FEATURE_CONTROL (3Ah) exists if CPUID.01H:ECX[5] VMX or [6] SMX, or
    /// CPUID.(7,0):EBX[2] SGX, enumerates one of its fields (SDM Vol. 4 Table 2-2; LMCE
    /// needs IA32_MCG_CAP[27], which KVM leaves clear until KVM_X86_SETUP_MCE).
    msr_feature_control_absent: "cpu::msr_feature_control_absent::long64", 0x3a, "IA32_FEATURE_CONTROL",
        [(1, 0, ECX, 1 << 5 | 1 << 6), (7, 0, EBX, 1 << 2)];
    /// IA32_MPERF (E7h) exists if CPUID.06H:ECX[0] is set (SDM Vol. 4 Table 2-2;
    /// APM Vol. 2 17.3).
    msr_mperf_absent: "cpu::msr_mperf_absent::long64", 0xe7, "IA32_MPERF", [(6, 0, ECX, 1 << 0)];
    /// IA32_APERF (E8h): as IA32_MPERF.
    msr_aperf_absent: "cpu::msr_aperf_absent::long64", 0xe8, "IA32_APERF", [(6, 0, ECX, 1 << 0)];
    /// IA32_PAT (277h) exists if CPUID.01H:EDX[16] PAT is set (SDM Vol. 4 Table 2-2;
    /// APM Vol. 2 7.8.1).
    msr_pat_absent: "cpu::msr_pat_absent::long64", 0x277, "IA32_PAT", [(1, 0, EDX, 1 << 16)];
    /// IA32_MTRRCAP (FEh) exists if CPUID.01H:EDX[12] MTRR is set (SDM Vol. 4 Table 2-2;
    /// APM Vol. 2 7.7.1).
    msr_mtrrcap_absent: "cpu::msr_mtrrcap_absent::long64", 0xfe, "IA32_MTRRCAP", [(1, 0, EDX, 1 << 12)];
    /// VIRT_SPEC_CTRL (C001_011Fh) exists if CPUID 8000_0008h:EBX[25] VIRT_SSBD is set
    /// (AMD's speculative store bypass whitepaper; APM Vol. 3 Appendix E.4.7).
    msr_virt_spec_ctrl_absent: "cpu::msr_virt_spec_ctrl_absent::long64", 0xc001_011f, "VIRT_SPEC_CTRL",
        [(0x8000_0008, 0, EBX, 1 << 25)];
    /// PerfEvtSel4 (C001_0208h, the fifth core counter) exists only with the core
    /// performance counter extensions, CPUID 8000_0001h:ECX[23] PerfCtrExtCore (APM Vol. 2
    /// 13.2.1: the legacy MSRs give four counters).
    msr_perf_ctl4_absent: "cpu::msr_perf_ctl4_absent::long64", 0xc001_0208, "PerfEvtSel4", [(0x8000_0001, 0, ECX, 1 << 23)];
    /// PerfCntGlobalCtl (C000_0301h) exists if CPUID 8000_0022h:EAX[0] PerfMonV2 is set
    /// (APM Vol. 2 13.2.2).
    msr_perf_global_ctl_absent: "cpu::msr_perf_global_ctl_absent::long64", 0xc000_0301, "PerfCntGlobalCtl",
        [(0x8000_0022, 0, EAX, 1 << 0)];
    /// TSC_RATIO (C000_0104h) exists if CPUID 8000_000Ah:EDX[4] TscRateMsr is set, and
    /// SVM with it (APM Vol. 2 15.30.5).
    msr_tsc_ratio_absent: "cpu::msr_tsc_ratio_absent::long64", 0xc000_0104, "TSC_RATIO",
        [(0x8000_000a, 0, EDX, 1 << 4), (0x8000_0001, 0, ECX, 1 << 2)];
}

/// Present twins: the MSR works where the table enumerates it.
macro_rules! msr_present {
    ($($(#[$doc:meta])* $fn:ident: $name:literal, ($leaf:expr, $sub:expr, $reg:ident, $mask:expr), $what:literal,
        $body:expr $(, requires = $req:expr)?;)+) => {$(
        test_case! {
            $(#[$doc])*
            name = $name, mode = Long64, path = Full $(, requires = $req)?;
            fn $fn() {
                if !offered($leaf, $sub, CpuidClear::$reg, $mask) {
                    skip!(concat!("KVM does not offer ", $what));
                }
                $body;
            }
        }
    )+};
}

msr_present! {
    /// IA32_ARCH_CAPABILITIES reads without a fault where CPUID.(7,0):EDX[29] is set.
    msr_arch_capabilities_present: "cpu::msr_arch_capabilities_present::long64", (7, 0, EDX, 1 << 29),
        "ARCH_CAPABILITIES", check_msr_readable(0x10a);
    /// IA32_XSS reads and takes 0 where CPUID.(0DH,1):EAX[3] XSAVES is set.
    msr_xss_present: "cpu::msr_xss_present::long64", (0xd, 1, EAX, 1 << 3), "XSAVES", {
        check_msr_readable(0xda0);
        check_msr_writable(0xda0, 0);
        check_eq!(check_msr_readable(0xda0), 0, "IA32_XSS after writing 0");
    };
    /// IA32_PRED_CMD takes IBPB (bit 0) where CPUID 8000_0008h:EBX[12] IBPB is set.
    msr_pred_cmd_present: "cpu::msr_pred_cmd_present::long64", (0x8000_0008, 0, EBX, 1 << 12), "IBPB",
        check_msr_writable(0x49, 1);
    /// IA32_FLUSH_CMD takes L1D_FLUSH (bit 0) where CPUID.(7,0):EDX[28] is set.
    msr_flush_cmd_present: "cpu::msr_flush_cmd_present::long64", (7, 0, EDX, 1 << 28), "L1D_FLUSH",
        check_msr_writable(0x10b, 1);
    /// VIRT_SPEC_CTRL reads and takes 0 where CPUID 8000_0008h:EBX[25] VIRT_SSBD is set.
    msr_virt_spec_ctrl_present: "cpu::msr_virt_spec_ctrl_present::long64", (0x8000_0008, 0, EBX, 1 << 25),
        "VIRT_SSBD", {
        check_msr_readable(0xc001_011f);
        check_msr_writable(0xc001_011f, 0);
    };
    /// The fifth core counter's PerfEvtSel4 and PerfCtr4 keep what is written (an event
    /// select with EN clear counts nothing) where CPUID 8000_0001h:ECX[23] is set (APM
    /// Vol. 2 13.2.1).
    msr_perf_ctl4_present: "cpu::msr_perf_ctl4_present::long64", (0x8000_0001, 0, ECX, 1 << 23),
        "PerfCtrExtCore", {
        check_msr_writable(0xc001_0208, 0x76);
        check_eq!(check_msr_readable(0xc001_0208), 0x76, "PerfEvtSel4 after writing 0x76 with EN clear");
        check_msr_writable(0xc001_0208, 0);
    };
    /// IA32_MCG_CAP reads where CPUID.01H:EDX[14] MCA is set, and its bank count agrees
    /// with the banks: MCi_CTL of the first bank past the count raises #GP(0) (SDM Vol. 3B
    /// 17.3.1, 17.3.2).
    msr_mcg_cap_present: "cpu::msr_mcg_cap_present::long64", (1, 0, EDX, 1 << 14), "MCA", {
        let banks = (check_msr_readable(0x179) & 0xff) as u32;
        let past = catch!("rdmsr", in("ecx") 0x400 + 4 * banks, out("eax") _, out("edx") _);
        check_exception!(past, exception::GP, Some(0));
    };
    /// IA32_TSC_DEADLINE reads where CPUID.01H:ECX[24] is set and the local APIC is on.
    msr_tsc_deadline_present: "cpu::msr_tsc_deadline_present::xapic", (1, 0, ECX, 1 << 24), "TSC_DEADLINE",
        check_msr_readable(0x6e0), requires = hvprobe_rt::abi::requires::IRQCHIP;
}

/// One case per control bit: its enumeration cleared, `$check` sets the bit and expects
/// #GP(0). For CR4: SDM Vol. 3A 2.5 and Vol. 2B MOV CR (#GP(0) for a reserved bit; the
/// feature's section says the bit is reserved without the feature), APM Vol. 2 3.1.3.
/// For EFER: APM Vol. 2 3.1.7 (reserved EFER bits), SDM Vol. 4 Table 2-2 IA32_EFER.
macro_rules! bit_absent {
    ($check:ident; $($(#[$doc:meta])* $fn:ident: $name:literal, $bit:expr, [$(($leaf:expr, $sub:expr, $reg:ident, $mask:expr)),+];)+) => {$(
        test_case! {
            $(#[$doc])*
            name = $name, mode = Long64, path = Full, cpuid_clear = [$(($leaf, $sub, $reg, $mask)),+];
            fn $fn() {
                $(check_cleared($leaf, $sub, CpuidClear::$reg, $mask);)+
                $check($bit);
            }
        }
    )+};
}

/// Writes CR4 = `value` and then CR4 = its old value, both from a supervisor page (U = 0
/// in its PTE), and returns what the first write raised. From a supervisor page because
/// the harness maps all RAM user-accessible: once CR4.SMEP is set, CPL0 can fetch
/// nothing else, and once CR4.SMAP is set it can touch no data; the probe does neither
/// between the two writes, then jumps back.
fn cr4_probe(value: u64) -> (Option<hvprobe_rt::Exception>, u64) {
    use hvprobe_rt::paging;
    let old = cpu::read_cr4();
    let page = paging::scratch_page();
    // mov cr4, rdi; mov cr4, rsi; jmp rax
    const PROBE: [u8; 8] = [0x0f, 0x22, 0xe7, 0x0f, 0x22, 0xe6, 0xff, 0xe0];
    // SAFETY: the scratch page is the image's own, unused by anything else.
    unsafe { core::ptr::copy_nonoverlapping(PROBE.as_ptr(), page as *mut u8, PROBE.len()) };
    let e = paging::with_pte(
        page,
        |pte| pte & !paging::USER,
        || {
            catch!("lea rax, [rip + 2f]", "jmp {probe}", "2:", probe = in(reg) page, in("rdi") value, in("rsi") old,
            out("rax") _)
        },
    );
    (e, cpu::read_cr4())
}

fn check_cr4_bit_refused(bit: u32) {
    let cr4 = cpu::read_cr4();
    let (e, after) = cr4_probe(cr4 | 1 << bit);
    check!(e.is_some(), "MOV to CR4 with bit {} set raised no exception", bit);
    check_exception!(e, exception::GP, Some(0));
    check_eq!(after, cr4, "CR4 changed by a refused write");
}

/// Where the table offers the feature, CR4 takes the bit (and the probe clears it again).
fn check_cr4_bit_taken(bit: u32) {
    let cr4 = cpu::read_cr4();
    let (e, after) = cr4_probe(cr4 | 1 << bit);
    check!(e.is_none(), "MOV to CR4 with bit {} set raised {:?}", bit, e.map(|e| e.vector));
    check_eq!(after, cr4, "CR4 after setting bit {} and writing the old value back", bit);
}

macro_rules! cr4_present {
    ($($(#[$doc:meta])* $fn:ident: $name:literal, $bit:expr, ($leaf:expr, $sub:expr, $reg:ident, $mask:expr), $what:literal;)+) => {$(
        test_case! {
            $(#[$doc])*
            name = $name, mode = Long64, path = Full;
            fn $fn() {
                if !offered($leaf, $sub, CpuidClear::$reg, $mask) {
                    skip!(concat!("KVM does not offer ", $what));
                }
                check_cr4_bit_taken($bit);
            }
        }
    )+};
}

cr4_present! {
    /// CR4.FSGSBASE is accepted where CPUID.(7,0):EBX[0] is set.
    cr4_fsgsbase_present: "cpu::cr4_fsgsbase_present::long64", 16, (7, 0, EBX, 1 << 0), "FSGSBASE";
    /// CR4.SMEP is accepted where CPUID.(7,0):EBX[7] is set.
    cr4_smep_present: "cpu::cr4_smep_present::long64", 20, (7, 0, EBX, 1 << 7), "SMEP";
    /// CR4.SMAP is accepted where CPUID.(7,0):EBX[20] is set.
    cr4_smap_present: "cpu::cr4_smap_present::long64", 21, (7, 0, EBX, 1 << 20), "SMAP";
    /// CR4.PKE is accepted where CPUID.(7,0):ECX[3] is set.
    cr4_pke_present: "cpu::cr4_pke_present::long64", 22, (7, 0, ECX, 1 << 3), "PKU";
    /// CR4.UMIP is accepted where CPUID.(7,0):ECX[2] is set.
    cr4_umip_present: "cpu::cr4_umip_present::long64", 11, (7, 0, ECX, 1 << 2), "UMIP";
    /// CR4.PCIDE is accepted where CPUID.01H:ECX[17] is set (CR3[11:0] is 0 here, as
    /// SDM Vol. 3A 4.10.1 requires).
    cr4_pcide_present: "cpu::cr4_pcide_present::long64", 17, (1, 0, ECX, 1 << 17), "PCID";
    /// CR4.CET is accepted where CPUID.(7,0):ECX[7] CET_SS is set (CR0.WP is set here, as
    /// SDM Vol. 3A 2.5 requires for CR4.CET).
    cr4_cet_present: "cpu::cr4_cet_present::long64", 23, (7, 0, ECX, 1 << 7), "CET shadow stacks";
}

bit_absent! {
    check_cr4_bit_refused;
    /// CR4.FSGSBASE (16) without CPUID.(7,0):EBX[0] FSGSBASE.
    cr4_fsgsbase_absent: "cpu::cr4_fsgsbase_absent::long64", 16, [(7, 0, EBX, 1 << 0)];
    /// CR4.SMEP (20) without CPUID.(7,0):EBX[7] SMEP (SDM Vol. 3A 4.6).
    cr4_smep_absent: "cpu::cr4_smep_absent::long64", 20, [(7, 0, EBX, 1 << 7)];
    /// CR4.SMAP (21) without CPUID.(7,0):EBX[20] SMAP (SDM Vol. 3A 4.6).
    cr4_smap_absent: "cpu::cr4_smap_absent::long64", 21, [(7, 0, EBX, 1 << 20)];
    /// CR4.PKE (22) without CPUID.(7,0):ECX[3] PKU (SDM Vol. 3A 4.6.2).
    cr4_pke_absent: "cpu::cr4_pke_absent::long64", 22, [(7, 0, ECX, 1 << 3)];
    /// CR4.UMIP (11) without CPUID.(7,0):ECX[2] UMIP.
    cr4_umip_absent: "cpu::cr4_umip_absent::long64", 11, [(7, 0, ECX, 1 << 2)];
    /// CR4.PCIDE (17) without CPUID.01H:ECX[17] PCID (SDM Vol. 3A 4.10.1).
    cr4_pcide_absent: "cpu::cr4_pcide_absent::long64", 17, [(1, 0, ECX, 1 << 17)];
    /// CR4.VMXE (13) without CPUID.01H:ECX[5] VMX (SDM Vol. 3C 24.7).
    cr4_vmxe_absent: "cpu::cr4_vmxe_absent::long64", 13, [(1, 0, ECX, 1 << 5)];
    /// CR4.SMXE (14) without CPUID.01H:ECX[6] SMX.
    cr4_smxe_absent: "cpu::cr4_smxe_absent::long64", 14, [(1, 0, ECX, 1 << 6)];
    /// CR4.CET (23) without CPUID.(7,0):ECX[7] CET_SS and EDX[20] CET_IBT (SDM Vol. 3A 2.5;
    /// APM Vol. 2 3.1.3).
    cr4_cet_absent: "cpu::cr4_cet_absent::long64", 23, [(7, 0, ECX, 1 << 7), (7, 0, EDX, 1 << 20)];
}

fn check_efer_bit_refused(bit: u32) {
    const EFER: u32 = x86::msr::IA32_EFER;
    // SAFETY: EFER exists in long mode.
    let efer = unsafe { cpu::rdmsr(EFER) };
    let value = efer | 1 << bit;
    let e = catch!("wrmsr", in("ecx") EFER, in("eax") value as u32, in("edx") (value >> 32) as u32);
    if e.is_none() {
        // SAFETY: puts back the EFER the write that should have faulted changed.
        unsafe { cpu::wrmsr(EFER, efer) };
    }
    check!(e.is_some(), "WRMSR of EFER {:#x} (bit {} set) raised no exception", value, bit);
    check_exception!(e, exception::GP, Some(0));
}

bit_absent! {
    check_efer_bit_refused;
    /// EFER.NXE (11) without CPUID 8000_0001h:EDX[20] NX.
    efer_nxe_absent: "cpu::efer_nxe_absent::long64", 11, [(0x8000_0001, 0, EDX, 1 << 20)];
    /// EFER.SVME (12) without CPUID 8000_0001h:ECX[2] SVM (APM Vol. 2 15.4).
    efer_svme_absent: "cpu::efer_svme_absent::long64", 12, [(0x8000_0001, 0, ECX, 1 << 2)];
    /// EFER.FFXSR (14) without CPUID 8000_0001h:EDX[25] FFXSR (APM Vol. 2 3.1.7).
    efer_ffxsr_absent: "cpu::efer_ffxsr_absent::long64", 14, [(0x8000_0001, 0, EDX, 1 << 25)];
    /// EFER.TCE (15) without CPUID 8000_0001h:ECX[17] TCE (APM Vol. 2 3.1.7).
    efer_tce_absent: "cpu::efer_tce_absent::long64", 15, [(0x8000_0001, 0, ECX, 1 << 17)];
    /// EFER.AIBRSE (21) without CPUID 8000_0021h:EAX[8] AutomaticIBRS (APM Vol. 2 3.1.7).
    efer_autoibrs_absent: "cpu::efer_autoibrs_absent::long64", 21, [(0x8000_0021, 0, EAX, 1 << 8)];
}

test_case! {
    /// EFER.NXE can be set where CPUID 8000_0001h:EDX[20] NX is set, and reads back
    /// (APM Vol. 2 3.1.7). The case puts EFER back.
    name = "cpu::efer_nxe_present::long64", mode = Long64, path = Full;
    fn efer_nxe_present() {
        if !offered(0x8000_0001, 0, CpuidClear::EDX, 1 << 20) {
            skip!("KVM does not offer NX");
        }
        const EFER: u32 = x86::msr::IA32_EFER;
        // SAFETY: EFER exists in long mode; NXE only makes bit 63 of the page tables
        // meaningful, and the harness's tables leave it clear.
        let (with, back) = unsafe {
            let efer = cpu::rdmsr(EFER);
            cpu::wrmsr(EFER, efer | 1 << 11);
            let with = cpu::rdmsr(EFER);
            cpu::wrmsr(EFER, efer);
            (with, efer)
        };
        check_eq!(with, back | 1 << 11, "EFER after setting NXE");
    }
}

/// Sets CR4.OSXSAVE, XSETBVs `xcr0` and returns what it raised, restoring XCR0 = x87 and
/// CR4 after.
fn xsetbv_with_osxsave(xcr0: u64) -> Option<hvprobe_rt::Exception> {
    let cr4 = cpu::read_cr4();
    // SAFETY: OSXSAVE only enables XSETBV/XGETBV; CR4 is put back below.
    unsafe { core::arch::asm!("mov cr4, {0}", in(reg) cr4 | 1 << 18) };
    let e = catch!("xsetbv", in("ecx") 0, in("eax") xcr0 as u32, in("edx") (xcr0 >> 32) as u32);
    // SAFETY: XCR0 = x87 only is always valid with OSXSAVE set; then CR4 as it was.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0, in("eax") 1, in("edx") 0);
        core::arch::asm!("mov cr4, {0}", in(reg) cr4);
    }
    e
}

test_case! {
    /// With AVX cleared from CPUID.01H:ECX[28] and its state component from
    /// CPUID.(0DH,0):EAX[2], XSETBV of XCR0 = x87|SSE|AVX raises #GP(0): XCR0 takes only the
    /// components CPUID.(0DH,0) lists (SDM Vol. 2C XSETBV; Vol. 1 13.3; APM Vol. 2 11.5.2).
    name = "cpu::xcr0_avx_absent::long64", mode = Long64, path = Full,
        cpuid_clear = [(1, 0, ECX, 1 << 28), (0xd, 0, EAX, 1 << 2)];
    fn xcr0_avx_absent() {
        check_cleared(1, 0, CpuidClear::ECX, 1 << 28);
        check_cleared(0xd, 0, CpuidClear::EAX, 1 << 2);
        if !offered(1, 0, CpuidClear::ECX, 1 << 26) {
            skip!("KVM does not offer XSAVE");
        }
        check_exception!(xsetbv_with_osxsave(0b111), exception::GP, Some(0));
    }
}

test_case! {
    /// Where CPUID.(0DH,0):EAX lists AVX state, XSETBV of XCR0 = x87|SSE|AVX is accepted;
    /// AVX without SSE is refused with #GP(0) (SDM Vol. 2C XSETBV: XCR0[2:1] = 10b).
    name = "cpu::xcr0_avx_present::long64", mode = Long64, path = Full;
    fn xcr0_avx_present() {
        if !offered(0xd, 0, CpuidClear::EAX, 1 << 2) {
            skip!("KVM does not offer AVX state in XCR0");
        }
        let e = xsetbv_with_osxsave(0b111);
        check!(e.is_none(), "XSETBV of XCR0 = 7 raised {:?}", e.map(|e| e.vector));
        check_exception!(xsetbv_with_osxsave(0b101), exception::GP, Some(0));
    }
}

test_case! {
    /// Without FXSR (CPUID.01H:EDX[24] cleared), FXSAVE at CPL0 raises #UD (SDM Vol. 2A
    /// FXSAVE: #UD if CPUID.01H:EDX.FXSR[bit 24] = 0; APM Vol. 4 FXSAVE). On PVM this is
    /// KVM's instruction emulator, which checks the bit.
    name = "cpu::fxsave_absent::long64", mode = Long64, path = Full, cpuid_clear = [(1, 0, EDX, 1 << 24)];
    fn fxsave_absent() {
        check_cleared(1, 0, CpuidClear::EDX, 1 << 24);
        #[repr(align(16))]
        struct Area([u8; 512]);
        let mut area = Area([0; 512]);
        let at = area.0.as_mut_ptr();
        check_exception!(catch!("fxsave64 [{0}]", in(reg) at), exception::UD, None);
        check_exception!(catch!("fxrstor64 [{0}]", in(reg) at), exception::UD, None);
    }
}

test_case! {
    /// Without x2APIC in CPUID.01H:ECX[21], setting IA32_APIC_BASE.EXTD (bit 10) raises
    /// #GP(0) (SDM Vol. 3A 11.12.1: EXTD is reserved when x2APIC is not enumerated).
    name = "irq::x2apic_enable_absent::xapic", mode = Long64, path = Full, requires = hvprobe_rt::abi::requires::IRQCHIP,
        cpuid_clear = [(1, 0, ECX, 1 << 21)];
    fn x2apic_enable_absent() {
        check_cleared(1, 0, CpuidClear::ECX, 1 << 21);
        // SAFETY: IA32_APIC_BASE exists with the in-kernel LAPIC.
        let base = unsafe { cpu::rdmsr(0x1b) };
        let value = base | 1 << 11 | 1 << 10;
        let e = catch!("wrmsr", in("ecx") 0x1b, in("eax") value as u32, in("edx") (value >> 32) as u32);
        if e.is_none() {
            // SAFETY: back to the xAPIC mode the write should not have left (x2APIC to
            // xAPIC needs a pass through disabled: SDM Vol. 3A 11.12.5).
            unsafe {
                cpu::wrmsr(0x1b, base & !(1 << 11 | 1 << 10));
                cpu::wrmsr(0x1b, base);
            }
        }
        check!(e.is_some(), "setting IA32_APIC_BASE.EXTD without x2APIC in CPUID raised no exception");
        check_exception!(e, exception::GP, Some(0));
    }
}

extern "C" fn pkru_at_cpl3(write: u64) {
    // SAFETY: with CR4.PKE clear both raise #UD (the case's point), which the CPL3
    // trampoline catches; ECX and EDX are 0 as the instructions require.
    unsafe {
        if write == 1 {
            core::arch::asm!("wrpkru", in("eax") 0u32, in("ecx") 0u32, in("edx") 0u32, options(nostack));
        } else {
            core::arch::asm!("rdpkru", in("ecx") 0u32, out("eax") _, out("edx") _, options(nostack));
        }
    }
}

/// RDPKRU and WRPKRU with CR4.PKE clear (the harness never sets it) raise #UD, at CPL0 or
/// CPL3 (SDM Vol. 2B RDPKRU/WRPKRU, "#UD If CR4.PKE = 0"; before PKU the encodings were
/// undefined, so this holds with or without the feature).
fn check_pkru_ud(cpl3: bool) {
    check_eq!(cpu::read_cr4() & (1 << 22), 0, "CR4.PKE at the start of the case");
    for write in [0u64, 1] {
        let e = super::cpu::call_at(cpl3, pkru_at_cpl3, write);
        check!(e.is_some(), "{} with CR4.PKE clear raised no exception", if write == 1 { "WRPKRU" } else { "RDPKRU" });
        check_exception!(e, exception::UD, None);
    }
}

test_case! {
    /// RDPKRU and WRPKRU raise #UD at CPL0 while CR4.PKE is clear.
    /// At CPL0 (`::long64`) and from CPL3 (`::cpl3`).
    name = "cpu::pkru_ud", cpl = [0, 3], mode = Long64, path = Full;
    fn pkru_ud(cpl3: bool) {
        check_pkru_ud(cpl3);
    }
}
