//! Hyper-V enlightenments as KVM offers them (KVM_GET_SUPPORTED_HV_CPUID, api.rst 4.118;
//! Microsoft's Hypervisor Top-Level Functional Specification, "TLFS", v6.0): the
//! interface leaves, the guest OS ID, VP index, reference counter and TSC page MSRs, and
//! the hypercall page. Each case asks the leaves for the feature it uses and skips,
//! naming it, where KVM does not offer it.

use hvprobe_rt::abi::CpuidClear;
use hvprobe_rt::abi::proto::service;
use hvprobe_rt::abi::requires::{HYPERV, IRQCHIP};
use hvprobe_rt::proto::service as request;
use hvprobe_rt::{catch, check, check_eq, check_no_exception, check_values, cpu, skip, test_case};

use super::cpu::{table_reg, try_rdmsr, try_wrmsr};

const MSR_GUEST_OS_ID: u32 = 0x4000_0000;
const MSR_HYPERCALL: u32 = 0x4000_0001;
const MSR_VP_INDEX: u32 = 0x4000_0002;
const MSR_TIME_REF_COUNT: u32 = 0x4000_0020;
const MSR_REFERENCE_TSC: u32 = 0x4000_0021;
/// TLFS 2.6: an open-source OS (bit 63) of type Linux (0x100 in bits 62:56).
const GUEST_OS_ID_LINUX: u64 = 0x8100_0000_0000_0000;

/// CPUID 0x40000003 EAX, the MSRs the partition may use (TLFS 2.4.4).
const TIME_REF_COUNT_AVAILABLE: u32 = 1 << 1;
const REFERENCE_TSC_AVAILABLE: u32 = 1 << 9;
const HYPERCALL_AVAILABLE: u32 = 1 << 5;
const VP_INDEX_AVAILABLE: u32 = 1 << 6;

fn need(feature: u32, what: &str) {
    if table_reg(0x4000_0003, 0, CpuidClear::EAX) & feature == 0 {
        skip!("KVM does not offer {} (CPUID 0x40000003 EAX)", what);
    }
}

fn rdmsr(msr: u32) -> u64 {
    let read = try_rdmsr(msr);
    check!(read.is_ok(), "RDMSR of a Hyper-V MSR KVM offers raised {:?}", read.err().map(|e| e.vector));
    read.unwrap_or(0)
}

fn wrmsr(msr: u32, value: u64) {
    let e = try_wrmsr(msr, value);
    check!(e.is_none(), "WRMSR of a Hyper-V MSR KVM offers raised {:?}", e.map(|e| e.vector));
}

test_case! {
    /// The interface leaves: 0x40000000 names the vendor and the highest leaf, 0x40000001
    /// EAX is the "Hv#1" interface signature (TLFS 2.4.1, 2.4.2).
    name = "pv::hyperv_cpuid::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_cpuid() {
        let vendor = cpu::cpuid(0x4000_0000, 0);
        check!(vendor.eax >= 0x4000_0005, "highest Hyper-V leaf {:#x}, below 0x40000005", vendor.eax);
        check_eq!(cpu::cpuid(0x4000_0001, 0).eax, u32::from_le_bytes(*b"Hv#1"), "the interface signature");
        // KVM's own leaves moved to 0x40000100, where KVM looks for them too.
        let kvm = cpu::cpuid(0x4000_0100, 0);
        let kvm_sig = u32::from_le_bytes(*b"KVMK") as u64 | (u32::from_le_bytes(*b"VMKV") as u64) << 32;
        check_eq!(kvm.ebx as u64 | (kvm.ecx as u64) << 32, kvm_sig, "KVM's signature at 0x40000100");
        check_eq!(kvm.edx & 0xff, u32::from(b'M'), "the signature's last letter");
    }
}

test_case! {
    /// HV_X64_MSR_GUEST_OS_ID keeps what the guest writes (TLFS 3.13).
    name = "pv::hyperv_guest_os_id::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_guest_os_id() {
        need(HYPERCALL_AVAILABLE, "the hypercall MSRs");
        wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID_LINUX | 0x0006_0001_0000);
        check_eq!(rdmsr(MSR_GUEST_OS_ID), GUEST_OS_ID_LINUX | 0x0006_0001_0000, "guest OS ID read back");
    }
}

test_case! {
    /// HV_X64_MSR_VP_INDEX of the boot vCPU is 0 (TLFS 7.8.1: the VMM sets each VP's
    /// index; KVM starts from the vCPU id).
    name = "pv::hyperv_vp_index::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_vp_index() {
        need(VP_INDEX_AVAILABLE, "HV_X64_MSR_VP_INDEX");
        check_eq!(rdmsr(MSR_VP_INDEX), 0, "VP index of vCPU 0");
    }
}

/// The hypercall page: a page of the image that nothing else uses, as the TLFS asks
/// the guest to provide (3.13).
fn hypercall_page() -> u64 {
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);
    static mut PAGE: Page = Page([0xcc; 4096]);
    &raw const PAGE as u64
}

/// Enables the hypercall page (guest OS ID first, TLFS 3.13) and returns its address.
fn enable_hypercall_page() -> u64 {
    need(HYPERCALL_AVAILABLE, "the hypercall page");
    wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID_LINUX);
    let page = hypercall_page();
    wrmsr(MSR_HYPERCALL, page | 1);
    page
}

test_case! {
    /// Writing HV_X64_MSR_HYPERCALL with the enable bit makes the hypervisor fill the
    /// page with a hypercall sequence ending in RET, and the MSR reads back the page and
    /// the enable bit (TLFS 3.13). On AMD the instruction is VMMCALL.
    name = "pv::hyperv_hypercall_page::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_hypercall_page() {
        let page = enable_hypercall_page();
        check_eq!(rdmsr(MSR_HYPERCALL) & !0xffe, page | 1, "HV_X64_MSR_HYPERCALL read back (GPA and enable)");
        // SAFETY: the page is the image's own; the hypervisor wrote it.
        let code = unsafe { core::ptr::read_volatile(page as *const [u8; 4]) };
        let amd = cpu::cpuid(0, 0).ebx == u32::from_le_bytes(*b"Auth");
        let call: [u8; 3] = if amd { [0x0f, 0x01, 0xd9] } else { [0x0f, 0x01, 0xc1] };
        check_eq!(&code[..3], &call[..], "the page's first instruction (VMMCALL on AMD, VMCALL on Intel)");
        check_eq!(code[3], 0xc3, "RET after the hypercall instruction");
    }
}

test_case! {
    /// A hypercall with an unknown call code through the page returns
    /// HV_STATUS_INVALID_HYPERCALL_CODE (2) in RAX (TLFS 3.8, 3.9).
    name = "pv::hyperv_hypercall_invalid::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_hypercall_invalid() {
        let page = enable_hypercall_page();
        let status = hypercall(page, 0xfffe, 0, 0);
        check_eq!(status & 0xffff, 2, "hypercall status of call code 0xfffe");
    }
}

test_case! {
    /// HV_X64_MSR_TIME_REF_COUNT counts 100 ns units: across a host sleep, its advance
    /// agrees with the host's monotonic clock read just outside it (TLFS 12.4).
    name = "pv::hyperv_time_ref_count::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_time_ref_count() {
        need(TIME_REF_COUNT_AVAILABLE, "HV_X64_MSR_TIME_REF_COUNT");
        let host = || request(service::HOST_CLOCK, [0; 4]).unwrap_or(0);
        let t0 = host();
        let r0 = rdmsr(MSR_TIME_REF_COUNT);
        let _ = request(service::HOST_SLEEP, [20_000, 0, 0, 0]);
        let r1 = rdmsr(MSR_TIME_REF_COUNT);
        let t1 = host();
        let counted = r1.wrapping_sub(r0) * 100;
        let outer = t1.wrapping_sub(t0);
        check_values!(counted >= 20_000_000 * 9 / 10, 20_000_000, counted, "ns counted across a 20 ms host sleep, short of it");
        check_values!(counted <= outer + outer / 10 + 1_000_000, outer, counted, "ns counted, past the host's clock around them");
    }
}

/// The reference TSC page (TLFS 12.7.1): sequence, then scale and offset.
#[repr(C)]
struct TscPage {
    sequence: u32,
    _reserved: u32,
    scale: u64,
    offset: i64,
}

test_case! {
    /// The reference TSC page: once enabled, either its sequence is 0 (the guest must
    /// use HV_X64_MSR_TIME_REF_COUNT) or ((TSC * scale) >> 64) + offset gives the same
    /// 100 ns time as the MSR, read just after (TLFS 12.7.2).
    name = "pv::hyperv_tsc_page::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_tsc_page() {
        need(REFERENCE_TSC_AVAILABLE | TIME_REF_COUNT_AVAILABLE, "the reference TSC page");
        #[repr(C, align(4096))]
        struct Page([u8; 4096]);
        static mut PAGE: Page = Page([0; 4096]);
        let page = &raw const PAGE as u64;
        wrmsr(MSR_REFERENCE_TSC, page | 1);
        let p = page as *const TscPage;
        // SAFETY: the hypervisor maintains the structure in the page.
        let (sequence, scale, offset) = unsafe {
            ((&raw const (*p).sequence).read_volatile(), (&raw const (*p).scale).read_volatile(), (&raw const (*p).offset).read_volatile())
        };
        if sequence == 0 {
            // Valid by the TLFS: the page says "use the MSR". The MSR must then work.
            let a = rdmsr(MSR_TIME_REF_COUNT);
            let b = rdmsr(MSR_TIME_REF_COUNT);
            check!(b >= a, "HV_X64_MSR_TIME_REF_COUNT went backwards");
            return;
        }
        let by_page = ((u128::from(cpu::rdtsc()) * u128::from(scale)) >> 64) as i64 + offset;
        let by_msr = rdmsr(MSR_TIME_REF_COUNT) as i64;
        let gap = by_msr - by_page;
        check_values!((0..100_000).contains(&gap), 0, gap as u64, "100 ns units from the TSC page to the MSR read after it");
    }
}

/// A hypercall through the page: the control word in RCX (call code, fast bit 16, rep
/// count in bits 43:32), the input in RDX and R8 (values for a fast call, GPAs else).
/// Returns RAX: the status in bits 15:0, the reps completed in bits 43:32 (TLFS 3.7-3.9).
fn hypercall(page: u64, control: u64, rdx: u64, r8: u64) -> u64 {
    let status: u64;
    let e = catch!("call {p}", p = in(reg) page, inout("rcx") control => _, inout("rdx") rdx => _,
        inout("r8") r8 => _, out("rax") status);
    check_no_exception!(e);
    status
}

const FAST: u64 = 1 << 16;
const fn reps(n: u64) -> u64 {
    n << 32
}
const HV_STATUS_SUCCESS: u64 = 0;
const HV_STATUS_INVALID_HYPERCALL_INPUT: u64 = 3;
const HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE: u64 = 0x0002;
const HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST: u64 = 0x0003;
const HVCALL_NOTIFY_LONG_SPIN_WAIT: u64 = 0x0008;
const HVCALL_SEND_IPI: u64 = 0x000b;
/// HV_FLUSH_ALL_PROCESSORS | HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES (TLFS 4.5).
const FLUSH_ALL: u64 = 0b11;

/// A page for hypercall input (8-byte aligned, within one page: TLFS 3.7).
fn input_page() -> *mut u64 {
    #[repr(C, align(4096))]
    struct Page([u64; 512]);
    static mut INPUT: Page = Page([0; 512]);
    &raw mut INPUT as *mut u64
}

test_case! {
    /// HvCallNotifyLongSpinWait, a simple fast call, succeeds (TLFS 14.5.1).
    name = "pv::hyperv_long_spin_wait::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_long_spin_wait() {
        let page = enable_hypercall_page();
        let status = hypercall(page, HVCALL_NOTIFY_LONG_SPIN_WAIT | FAST, 1, 0);
        check_eq!(status & 0xffff, HV_STATUS_SUCCESS, "status of HvCallNotifyLongSpinWait");
    }
}

test_case! {
    /// A rep count on a simple hypercall is invalid input: HV_STATUS_INVALID_HYPERCALL_INPUT
    /// (TLFS 3.9, "the rep count must be zero for simple hypercalls").
    name = "pv::hyperv_rep_on_simple::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_rep_on_simple() {
        let page = enable_hypercall_page();
        let status = hypercall(page, HVCALL_NOTIFY_LONG_SPIN_WAIT | FAST | reps(1), 1, 0);
        check_eq!(status & 0xffff, HV_STATUS_INVALID_HYPERCALL_INPUT, "status of a simple call with a rep count");
    }
}

test_case! {
    /// HvCallFlushVirtualAddressSpace with its input in memory, all processors and address
    /// spaces, succeeds (TLFS 4.5.2).
    name = "pv::hyperv_flush_space::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_flush_space() {
        let page = enable_hypercall_page();
        let input = input_page();
        // SAFETY: the input page is this case's: address space, flags, processor mask.
        unsafe { input.cast::<[u64; 3]>().write_volatile([0, FLUSH_ALL, 0]) };
        let status = hypercall(page, HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE, input as u64, 0);
        check_eq!(status & 0xffff, HV_STATUS_SUCCESS, "status of HvCallFlushVirtualAddressSpace");
    }
}

test_case! {
    /// HvCallFlushVirtualAddressList is a rep hypercall: with two GVA ranges it succeeds
    /// and reports both reps completed in RAX bits 43:32 (TLFS 3.8, 4.5.3).
    name = "pv::hyperv_flush_list::long64", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_flush_list() {
        let page = enable_hypercall_page();
        let input = input_page();
        // SAFETY: as above: the header (address space, flags, mask), then two GVA entries.
        unsafe { input.cast::<[u64; 5]>().write_volatile([0, FLUSH_ALL, 0, 0x10_0000, 0x20_0000]) };
        let status = hypercall(page, HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST | reps(2), input as u64, 0);
        check_eq!(status & 0xffff, HV_STATUS_SUCCESS, "status of HvCallFlushVirtualAddressList");
        check_eq!(status >> 32 & 0xfff, 2, "reps completed");
    }
}

static HV_IPIS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
const HV_IPI_VECTOR: u8 = 0xd4;

fn hv_ipi(_: &mut hvprobe_rt::exception::Frame) {
    HV_IPIS.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
    hvprobe_rt::apic::Apic::XApic.eoi();
}

fn hv_backstop(_: &mut hvprobe_rt::exception::Frame) {
    hvprobe_rt::apic::Apic::XApic.eoi();
}

test_case! {
    /// HvCallSendSyntheticClusterIpi (fast: vector in RDX, processor mask in R8) to this
    /// VP delivers the vector through the local APIC (TLFS 10.5.2).
    name = "pv::hyperv_send_ipi::xapic", mode = Long64, path = Para, requires = HYPERV | IRQCHIP;
    fn hyperv_send_ipi() {
        let apic = hvprobe_rt::apic::Apic::XApic.enable();
        hvprobe_rt::exception::set_handler(HV_IPI_VECTOR, hv_ipi);
        hvprobe_rt::exception::set_handler(0xd5, hv_backstop);
        let page = enable_hypercall_page();
        let vp = rdmsr(MSR_VP_INDEX);
        let status = hypercall(page, HVCALL_SEND_IPI | FAST, u64::from(HV_IPI_VECTOR), 1 << vp);
        check_eq!(status & 0xffff, HV_STATUS_SUCCESS, "status of HvCallSendSyntheticClusterIpi");
        if HV_IPIS.load(core::sync::atomic::Ordering::SeqCst) == 0 {
            apic.hlt_with_backstop(0xd5, 10_000_000);
        }
        // SAFETY: interrupts off again for the rest of the case.
        unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
        check_eq!(HV_IPIS.load(core::sync::atomic::Ordering::SeqCst), 1, "IPIs delivered");
    }
}

test_case! {
    /// HvCallSendSyntheticClusterIpi with a vector below 0x10 is invalid input (TLFS
    /// 10.5.2: "vector ... 0x10 to 0xFF").
    name = "pv::hyperv_send_ipi_bad_vector::xapic", mode = Long64, path = Para, requires = HYPERV | IRQCHIP;
    fn hyperv_send_ipi_bad_vector() {
        hvprobe_rt::apic::Apic::XApic.enable();
        let page = enable_hypercall_page();
        let status = hypercall(page, HVCALL_SEND_IPI | FAST, 5, 1);
        check_eq!(status & 0xffff, HV_STATUS_INVALID_HYPERCALL_INPUT, "status of an IPI of vector 5");
    }
}

static CPL3_HYPERCALL: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

extern "C" fn hypercall_at_cpl3(page: u64) {
    CPL3_HYPERCALL.store(1, core::sync::atomic::Ordering::SeqCst);
    // SAFETY: the hypercall sequence raises #UD at CPL3 (the case's point), which the
    // trampoline catches; nothing else is touched.
    unsafe {
        core::arch::asm!("call {p}", p = in(reg) page, inout("rcx") HVCALL_NOTIFY_LONG_SPIN_WAIT | FAST => _,
            inout("rdx") 1u64 => _, inout("r8") 0u64 => _, out("rax") _)
    };
}

test_case! {
    /// A hypercall from CPL3 raises #UD (TLFS 3.5: "hypercalls ... from CPL > 0 ... #UD").
    name = "pv::hyperv_hypercall_cpl3::cpl3", mode = Long64, path = Para, requires = HYPERV;
    fn hyperv_hypercall_cpl3() {
        let page = enable_hypercall_page();
        let e = hvprobe_rt::user::call_at_cpl3(hypercall_at_cpl3, page);
        check_eq!(CPL3_HYPERCALL.load(core::sync::atomic::Ordering::SeqCst), 1, "the CPL3 function ran");
        check!(e.is_some(), "a hypercall at CPL3 raised no exception");
        hvprobe_rt::check_exception!(e, hvprobe_rt::exception::UD, None);
    }
}

// The synthetic interrupt controller (TLFS chapter 11) and timers (chapter 12). The host
// enables SynIC on every vCPU of a case that requires HYPERV and IRQCHIP
// (KVM_CAP_HYPERV_SYNIC2), as a VMM offering KVM_GET_SUPPORTED_HV_CPUID's leaves does.

const SYNIC_AVAILABLE: u32 = 1 << 2;
const SYNTIMER_AVAILABLE: u32 = 1 << 3;
const MSR_SCONTROL: u32 = 0x4000_0080;
const MSR_SVERSION: u32 = 0x4000_0081;
const MSR_SIMP: u32 = 0x4000_0083;
const MSR_EOM: u32 = 0x4000_0084;
const MSR_SINT0: u32 = 0x4000_0090;
const MSR_STIMER0_CONFIG: u32 = 0x4000_00b0;
const MSR_STIMER0_COUNT: u32 = 0x4000_00b1;
const SINT_MASKED: u64 = 1 << 16;

test_case! {
    /// HV_X64_MSR_SVERSION reads 1, the SynIC version (TLFS 11.8.3).
    name = "pv::hyperv_synic_version::xapic", mode = Long64, path = Para, requires = HYPERV | IRQCHIP;
    fn hyperv_synic_version() {
        need(SYNIC_AVAILABLE, "the SynIC MSRs");
        check_eq!(rdmsr(MSR_SVERSION), 1, "HV_X64_MSR_SVERSION");
    }
}

test_case! {
    /// Every SINTx starts masked (TLFS 11.8.4: "at virtual processor creation time, the
    /// default value of all SINTx registers is 0x0000000000010000").
    name = "pv::hyperv_synic_sint_reset::xapic", mode = Long64, path = Para, requires = HYPERV | IRQCHIP;
    fn hyperv_synic_sint_reset() {
        need(SYNIC_AVAILABLE, "the SynIC MSRs");
        for i in 0..16 {
            check_eq!(rdmsr(MSR_SINT0 + i), SINT_MASKED, "HV_X64_MSR_SINT{} at reset", i);
        }
    }
}

test_case! {
    /// SCONTROL's enable bit and the SIMP page's GPA and enable bit read back as written
    /// (TLFS 11.8.1, 11.8.5).
    name = "pv::hyperv_synic_control::xapic", mode = Long64, path = Para, requires = HYPERV | IRQCHIP;
    fn hyperv_synic_control() {
        need(SYNIC_AVAILABLE, "the SynIC MSRs");
        wrmsr(MSR_SCONTROL, 1);
        check_eq!(rdmsr(MSR_SCONTROL) & 1, 1, "SCONTROL enable");
        let simp = input_page() as u64;
        wrmsr(MSR_SIMP, simp | 1);
        check_eq!(rdmsr(MSR_SIMP), simp | 1, "SIMP (GPA and enable)");
    }
}

static STIMER_IRQS: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);
const STIMER_VECTOR: u8 = 0xd6;

fn stimer_irq(_: &mut hvprobe_rt::exception::Frame) {
    STIMER_IRQS.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
    hvprobe_rt::apic::Apic::XApic.eoi();
}

test_case! {
    /// A one-shot synthetic timer on SINT2: when it expires the hypervisor writes an
    /// HvMessageTimerExpired (0x80000010) message into SINT2's slot of the SIMP page and
    /// interrupts with SINT2's vector (TLFS 12.3, 11.9).
    name = "pv::hyperv_stimer_message::xapic", mode = Long64, path = Para, requires = HYPERV | IRQCHIP;
    fn hyperv_stimer_message() {
        need(SYNIC_AVAILABLE | SYNTIMER_AVAILABLE | TIME_REF_COUNT_AVAILABLE, "SynIC timers");
        let apic = hvprobe_rt::apic::Apic::XApic.enable();
        hvprobe_rt::exception::set_handler(STIMER_VECTOR, stimer_irq);
        hvprobe_rt::exception::set_handler(0xd7, hv_backstop);
        wrmsr(MSR_GUEST_OS_ID, GUEST_OS_ID_LINUX);
        let simp = input_page();
        // SAFETY: the page is this case's; the SIMP holds 16 messages of 256 bytes.
        unsafe { core::ptr::write_bytes(simp.cast::<u8>(), 0, 4096) };
        wrmsr(MSR_SCONTROL, 1);
        wrmsr(MSR_SIMP, simp as u64 | 1);
        wrmsr(MSR_SINT0 + 2, u64::from(STIMER_VECTOR));
        // 1 ms in 100 ns units, relative (periodic and lazy bits clear), SINT 2, enabled.
        wrmsr(MSR_STIMER0_COUNT, 10_000);
        wrmsr(MSR_STIMER0_CONFIG, 1 | 2 << 16);
        for _ in 0..100 {
            if STIMER_IRQS.load(core::sync::atomic::Ordering::SeqCst) != 0 {
                break;
            }
            apic.hlt_with_backstop(0xd7, 2_000_000);
        }
        // SAFETY: interrupts off again.
        unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
        // SAFETY: slot 2 of the SIMP page: the message type is its first u32.
        let message_type = unsafe { simp.cast::<u8>().add(2 * 256).cast::<u32>().read_volatile() };
        wrmsr(MSR_EOM, 0);
        check_eq!(STIMER_IRQS.load(core::sync::atomic::Ordering::SeqCst), 1, "SINT2 interrupts after the timer expired");
        check_eq!(message_type, 0x8000_0010, "message type in SINT2's SIMP slot (HvMessageTimerExpired)");
    }
}
