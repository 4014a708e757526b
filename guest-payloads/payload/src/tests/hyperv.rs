//! Hyper-V enlightenments as KVM offers them (KVM_GET_SUPPORTED_HV_CPUID, api.rst 4.118;
//! Microsoft's Hypervisor Top-Level Functional Specification, "TLFS", v6.0): the
//! interface leaves, the guest OS ID, VP index, reference counter and TSC page MSRs, and
//! the hypercall page. Each case asks the leaves for the feature it uses and skips,
//! naming it, where KVM does not offer it.

use hvprobe_rt::abi::CpuidClear;
use hvprobe_rt::abi::proto::service;
use hvprobe_rt::abi::requires::HYPERV;
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
        let status: u64;
        let e = catch!("call {p}", p = in(reg) page, inout("rcx") 0xfffeu64 => _, inout("rdx") 0u64 => _,
            inout("r8") 0u64 => _, out("rax") status);
        check_no_exception!(e);
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
