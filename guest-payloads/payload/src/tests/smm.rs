//! System management mode (APM Vol. 2 chapter 10; KVM_SMI, api.rst 4.96). A case copies
//! the 16-bit handler `hv_smm_handler` to SMBASE + 0x8000 (SMBASE starts at 0x30000,
//! APM 10.2.2), asks for an SMI (KVM_SMI through the SMI service, or an SMI IPI to its
//! own APIC), and reads what the handler recorded and what the SMI saved in the state-save
//! area at SMBASE + 0xFE00 (APM 10.2.3, Table 10-2, the layout KVM uses on every vendor).
//!
//! The handler sets DS and SS to 0x3000 (base 0x30000, whatever SMBASE is: the record
//! stays put when a case relocates SMBASE), counts its entries, records its entry state
//! (CS, CR0, EFLAGS, DR7, EFER), then does what the case's control word asks (write a new
//! RAX or a new SMBASE into the state-save area) and returns with RSM.
//!
//! The cases that need SMM require it (KVM_CAP_X86_SMM); RSM outside SMM raises #UD
//! everywhere.

use core::sync::atomic::{AtomicU32, Ordering::SeqCst};

use hvprobe_rt::abi::proto::service;
use hvprobe_rt::abi::requires;
use hvprobe_rt::apic::{Apic, reg};
use hvprobe_rt::cpu;
use hvprobe_rt::exception;
use hvprobe_rt::proto::service as request;
use hvprobe_rt::user::call_at_cpl3;
use hvprobe_rt::{catch, check, check_eq, check_exception, test_case};

use super::cpu_sys::{limit_base, sgdt, sidt};

/// SMBASE after reset (APM 10.2.2) and where a relocating case moves it.
const SMBASE: u64 = 0x30000;
const NEW_SMBASE: u64 = 0x40000;
/// The handler's entry point, relative to SMBASE.
const HANDLER: u64 = 0x8000;
/// The state-save area, relative to SMBASE, and the offsets in it (APM Table 10-2; KVM's
/// `struct kvm_smram_state_64`).
const SAVE: u64 = 0xfe00;
const SAVE_CS: u64 = 0x10;
const SAVE_SS: u64 = 0x20;
const SAVE_GDTR: u64 = 0x60;
const SAVE_IDTR: u64 = 0x80;
const SAVE_TR: u64 = 0x90;
const SAVE_EFER: u64 = 0xd0;
const SAVE_REVISION: u64 = 0xfc;
const SAVE_SMBASE: u64 = 0x100;
const SAVE_CR4: u64 = 0x148;
const SAVE_CR3: u64 = 0x150;
const SAVE_CR0: u64 = 0x158;
const SAVE_RIP: u64 = 0x178;
const SAVE_R13: u64 = 0x190;
const SAVE_R12: u64 = 0x198;
/// The AMD64 SMM revision identifier with SMBASE relocation (APM 10.2.3: 0002_0064h).
const REVISION_AMD64: u32 = 0x0002_0064;

/// What the handler records, at 0x37000 (DS = 0x3000, offset 0x7000).
#[repr(C)]
struct Record {
    entries: u32,
    cs: u32,
    cr0: u32,
    eflags: u32,
    dr7: u32,
    efer: u32,
    _pad: [u32; 2],
    /// Bit 0: write `new_rax` into the saved RAX; bit 1: write `new_smbase` into the saved
    /// SMBASE.
    control: u32,
    new_rax: u32,
    new_smbase: u32,
}

const RECORD: u64 = 0x37000;
const CONTROL_RAX: u32 = 1;
const CONTROL_SMBASE: u32 = 2;

core::arch::global_asm!(
    r#"
    .section .rodata.smm, "a"
    .global hv_smm_handler, hv_smm_handler_end
    .code16
hv_smm_handler:
    mov bx, cs
    mov ax, 0x3000
    mov ds, ax
    mov ss, ax
    mov sp, 0x6f00
    inc dword ptr [0x7000]
    movzx ebx, bx
    mov dword ptr [0x7004], ebx
    mov eax, cr0
    mov dword ptr [0x7008], eax
    pushfd
    pop eax
    mov dword ptr [0x700c], eax
    mov eax, dr7
    mov dword ptr [0x7010], eax
    mov ecx, 0xc0000080
    rdmsr
    mov dword ptr [0x7014], eax
    test byte ptr [0x7020], 1
    jz 1f
    mov eax, dword ptr [0x7024]
    mov dword ptr [0xfff8], eax
    mov dword ptr [0xfffc], 0
1:
    test byte ptr [0x7020], 2
    jz 2f
    mov eax, dword ptr [0x7028]
    mov dword ptr [0xff00], eax
2:
    rsm
hv_smm_handler_end:
    .code64
    .text
"#
);

unsafe extern "C" {
    static hv_smm_handler: u8;
    static hv_smm_handler_end: u8;
}

/// Copies the handler to `smbase` + 0x8000 and clears the record.
fn install(smbase: u64) {
    let (start, end) = (&raw const hv_smm_handler, &raw const hv_smm_handler_end);
    let len = end as usize - start as usize;
    // SAFETY: [smbase + 0x8000, + len) and the record are RAM below the user stack that
    // nothing else uses (the layout has nothing between the page tables and 0x50000).
    unsafe {
        core::ptr::copy_nonoverlapping(start, (smbase + HANDLER) as *mut u8, len);
        core::ptr::write_bytes(RECORD as *mut u8, 0, size_of::<Record>());
    }
}

fn record() -> &'static Record {
    // SAFETY: the record is plain RAM the handler writes only while this vCPU is in SMM.
    unsafe { &*(RECORD as *const Record) }
}

fn entries() -> u32 {
    // SAFETY: as in `record`; read volatile because SMM writes it behind the compiler.
    unsafe { (&raw const (*(RECORD as *const Record)).entries).read_volatile() }
}

fn set_control(control: u32, new_rax: u32, new_smbase: u32) {
    // SAFETY: as in `record`.
    unsafe {
        let r = RECORD as *mut Record;
        (&raw mut (*r).control).write_volatile(control);
        (&raw mut (*r).new_rax).write_volatile(new_rax);
        (&raw mut (*r).new_smbase).write_volatile(new_smbase);
    }
}

fn saved_u64(smbase: u64, offset: u64) -> u64 {
    // SAFETY: the state-save area is RAM at smbase + 0xfe00 that the SMI wrote.
    unsafe { ((smbase + SAVE + offset) as *const u64).read_volatile() }
}

fn saved_u16(smbase: u64, offset: u64) -> u16 {
    // SAFETY: as in `saved_u64`.
    unsafe { ((smbase + SAVE + offset) as *const u16).read_volatile() }
}

fn saved_u32(smbase: u64, offset: u64) -> u32 {
    // SAFETY: as in `saved_u64`.
    unsafe { ((smbase + SAVE + offset) as *const u32).read_volatile() }
}

/// KVM_SMI through the service; the vCPU enters SMM before the instruction after the
/// request's doorbell.
fn kvm_smi() {
    let r = request(service::SMI, [0; 4]);
    check!(r.is_ok(), "the host refused KVM_SMI: {:?}", r);
}

/// What an SMI IPI to this vCPU's own APIC left: the saved RIP's window, and the R12 and
/// R13 values the guest held when it sent it.
struct IpiSmi {
    window: (u64, u64),
    rax_after: u64,
}

/// Sends an SMI IPI (delivery mode 010b, vector 0; SDM Vol. 3A 11.6.1) to this vCPU's
/// APIC with R12 and R13 holding two patterns and RAX 0, then waits (bounded) for the
/// handler to count it. The window is where the SMI may have been taken.
fn ipi_smi() -> IpiSmi {
    let apic = Apic::XApic.enable();
    let id = apic.read(reg::ID) >> 24;
    apic.write(reg::ICR_HIGH, id << 24);
    let before = entries();
    let icr = hvprobe_rt::abi::layout::APIC_BASE + u64::from(reg::ICR_LOW);
    let (start, end, rax): (u64, u64, u64);
    // SAFETY: the ICR write asks for an SMI to this vCPU; R12, R13 are declared clobbered,
    // the loop reads only the record.
    unsafe {
        core::arch::asm!(
            "lea {start}, [rip + 3f]",
            "lea {end}, [rip + 4f]",
            "mov r12, {p12}",
            "mov r13, {p13}",
            "mov dword ptr [{icr}], {low:e}",
            "3:",
            "mov {n:e}, 1000000",
            "5:",
            "cmp dword ptr [{count}], {before:e}",
            "jne 4f",
            "pause",
            "dec {n:e}",
            "jnz 5b",
            "4:",
            start = out(reg) start,
            end = out(reg) end,
            p12 = const 0x1212_3434_5656_7878u64,
            p13 = const 0x1313_2424_3535_4646u64,
            icr = in(reg) icr,
            low = in(reg) 0x4200u32,
            n = out(reg) _,
            count = in(reg) RECORD,
            before = in(reg) before,
            out("r12") _,
            out("r13") _,
            inout("rax") 0u64 => rax,
            options(nostack),
        );
    }
    IpiSmi { window: (start, end), rax_after: rax }
}

test_case! {
    /// KVM_SMI enters SMM at SMBASE + 0x8000 with CS = SMBASE >> 4, and RSM resumes the
    /// guest where it was (api.rst 4.96; APM 10.2.2, 10.3.3, Table 10-3).
    name = "cpu::smm_kvm_smi::long64", mode = Long64, path = Full, requires = requires::SMM;
    fn smm_kvm_smi() {
        install(SMBASE);
        kvm_smi();
        check_eq!(entries(), 1, "SMM handler entries after KVM_SMI");
        check_eq!(record().cs, (SMBASE >> 4) as u32, "CS selector in SMM (SMBASE >> 4)");
        check_eq!(cpu::read_cs(), 0x08, "CS after RSM");
    }
}

test_case! {
    /// The processor state SMM starts in: CR0.PE and PG clear, EFLAGS = 2, DR7 = 0x400,
    /// EFER = 0 (APM 10.3.3, Table 10-3; SDM Vol. 3C 32.5.1, Table 32-4).
    name = "cpu::smm_entry_state::long64", mode = Long64, path = Full, requires = requires::SMM;
    fn smm_entry_state() {
        install(SMBASE);
        kvm_smi();
        let r = record();
        check_eq!(entries(), 1, "SMM handler entries");
        check_eq!(r.cr0 & 0x8000_0001, 0, "CR0.PG and CR0.PE in SMM");
        check_eq!(r.eflags, 2, "EFLAGS in SMM");
        check_eq!(r.dr7, 0x400, "DR7 in SMM");
        check_eq!(r.efer, 0, "EFER (low half) in SMM");
    }
}

test_case! {
    /// The state-save area names its format and the SMBASE: revision 0002_0064h at FEFCh,
    /// SMBASE at FF00h (APM 10.2.3, Table 10-2).
    name = "cpu::smm_save_area_id::long64", mode = Long64, path = Full, requires = requires::SMM;
    fn smm_save_area_id() {
        install(SMBASE);
        kvm_smi();
        check_eq!(saved_u32(SMBASE, SAVE_REVISION), REVISION_AMD64, "SMM revision identifier");
        check_eq!(saved_u32(SMBASE, SAVE_SMBASE), SMBASE as u32, "saved SMBASE");
    }
}

test_case! {
    /// The state-save area holds the interrupted mode's control registers and EFER (APM
    /// Table 10-2: FF48h CR4, FF50h CR3, FF58h CR0, FED0h EFER).
    name = "cpu::smm_save_area_control::long64", mode = Long64, path = Full, requires = requires::SMM;
    fn smm_save_area_control() {
        install(SMBASE);
        // SAFETY: EFER exists in long mode.
        let efer = unsafe { cpu::rdmsr(x86::msr::IA32_EFER) };
        let (cr0, cr3, cr4) = (cpu::read_cr0(), cpu::read_cr3(), cpu::read_cr4());
        kvm_smi();
        check_eq!(saved_u64(SMBASE, SAVE_CR0), cr0, "saved CR0");
        check_eq!(saved_u64(SMBASE, SAVE_CR3), cr3, "saved CR3");
        check_eq!(saved_u64(SMBASE, SAVE_CR4), cr4, "saved CR4");
        check_eq!(saved_u64(SMBASE, SAVE_EFER), efer, "saved EFER");
    }
}

test_case! {
    /// An SMI IPI (ICR delivery mode SMI to the own APIC ID) enters SMM; the state-save
    /// area holds the RIP it interrupted and the general registers (SDM Vol. 3A 11.6.1;
    /// APM Table 10-2: FF78h RIP, FF98h R12, FF90h R13).
    name = "cpu::smm_ipi_save_regs::xapic", mode = Long64, path = Full,
        requires = requires::SMM | requires::IRQCHIP;
    fn smm_ipi_save_regs() {
        install(SMBASE);
        let s = ipi_smi();
        check_eq!(entries(), 1, "SMM handler entries after the SMI IPI");
        let rip = saved_u64(SMBASE, SAVE_RIP);
        check!(
            (s.window.0..=s.window.1).contains(&rip),
            "saved RIP {:#x} outside the instructions after the ICR write [{:#x}, {:#x}]",
            rip,
            s.window.0,
            s.window.1
        );
        check_eq!(saved_u64(SMBASE, SAVE_R12), 0x1212_3434_5656_7878, "saved R12");
        check_eq!(saved_u64(SMBASE, SAVE_R13), 0x1313_2424_3535_4646, "saved R13");
    }
}

test_case! {
    /// An SMI is taken with EFLAGS.IF clear: IF masks maskable interrupts only (APM 10.3.1;
    /// SDM Vol. 3C 32.2).
    name = "cpu::smm_ipi_with_if_clear::xapic", mode = Long64, path = Full,
        requires = requires::SMM | requires::IRQCHIP;
    fn smm_ipi_with_if_clear() {
        install(SMBASE);
        // SAFETY: interrupts stay off for the rest of this case, which takes none.
        unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
        ipi_smi();
        check_eq!(entries(), 1, "SMM handler entries after the SMI IPI with IF = 0");
    }
}

test_case! {
    /// RSM loads the state-save area, not the state at the SMI: a handler that writes RAX
    /// there changes the interrupted code's RAX (APM 10.3.4 and RSM).
    name = "cpu::smm_rsm_loads_save_area::xapic", mode = Long64, path = Full,
        requires = requires::SMM | requires::IRQCHIP;
    fn smm_rsm_loads_save_area() {
        install(SMBASE);
        set_control(CONTROL_RAX, 0x5eed_cafe, 0);
        let s = ipi_smi();
        check_eq!(entries(), 1, "SMM handler entries");
        check_eq!(s.rax_after, 0x5eed_cafe, "RAX after RSM (the handler's value)");
    }
}

test_case! {
    /// SMBASE relocation: a handler that writes a new SMBASE into the state-save area
    /// moves the next SMI's entry to the new SMBASE + 0x8000 (APM 10.2.2 and 10.2.3, the
    /// revision identifier's bit 17).
    name = "cpu::smm_smbase_relocation::long64", mode = Long64, path = Full, requires = requires::SMM;
    fn smm_smbase_relocation() {
        install(SMBASE);
        install(NEW_SMBASE);
        set_control(CONTROL_SMBASE, 0, NEW_SMBASE as u32);
        kvm_smi();
        check_eq!(entries(), 1, "SMM handler entries after the first SMI");
        set_control(0, 0, 0);
        kvm_smi();
        check_eq!(entries(), 2, "SMM handler entries after the second SMI");
        check_eq!(record().cs, (NEW_SMBASE >> 4) as u32, "CS selector in the second SMM entry");
        check_eq!(saved_u32(NEW_SMBASE, SAVE_SMBASE), NEW_SMBASE as u32, "SMBASE in the new state-save area");
    }
}

test_case! {
    /// A relocated SMBASE is vCPU state that survives a save and restore into a fresh VM
    /// (MSR_IA32_SMBASE in KVM_GET_MSR_INDEX_LIST; api.rst 4.3 KVM_GET_MSRS).
    name = "cpu::smm_smbase_restore::long64", mode = Long64, path = Full, requires = requires::SMM, migrate = Restore;
    fn smm_smbase_restore() {
        install(SMBASE);
        install(NEW_SMBASE);
        set_control(CONTROL_SMBASE, 0, NEW_SMBASE as u32);
        kvm_smi();
        set_control(0, 0, 0);
        hvprobe_rt::state::checkpoint(1);
        kvm_smi();
        check_eq!(entries(), 2, "SMM handler entries");
        check_eq!(record().cs, (NEW_SMBASE >> 4) as u32, "CS selector in the SMM entry after the restore");
    }
}

/// The GDTR and IDTR the guest runs with, as (limit, base) pairs.
fn descriptor_tables() -> ((u16, u64), (u16, u64)) {
    (limit_base(&sgdt()), limit_base(&sidt()))
}

test_case! {
    /// The state-save area holds the interrupted code's segment selectors and TR (APM
    /// Table 10-2: FE10h CS, FE20h SS, FE90h TR, each selector first).
    name = "cpu::smm_save_area_segments::long64", mode = Long64, path = Full, requires = requires::SMM;
    fn smm_save_area_segments() {
        install(SMBASE);
        let ss: u16;
        let tr: u16;
        // SAFETY: reads two selectors.
        unsafe { core::arch::asm!("mov {0:x}, ss", "str {1:x}", out(reg) ss, out(reg) tr, options(nomem, nostack)) };
        kvm_smi();
        check_eq!(saved_u16(SMBASE, SAVE_CS), cpu::read_cs(), "saved CS selector");
        check_eq!(saved_u16(SMBASE, SAVE_SS), ss, "saved SS selector");
        check_eq!(saved_u16(SMBASE, SAVE_TR), tr, "saved TR selector");
    }
}

test_case! {
    /// The state-save area holds GDTR and IDTR, limit and base (APM Table 10-2: FE64h
    /// GDTR limit, FE68h base; FE84h IDTR limit, FE88h base).
    name = "cpu::smm_save_area_tables::long64", mode = Long64, path = Full, requires = requires::SMM;
    fn smm_save_area_tables() {
        install(SMBASE);
        let ((glimit, gbase), (ilimit, ibase)) = descriptor_tables();
        kvm_smi();
        check_eq!(saved_u32(SMBASE, SAVE_GDTR + 4), u32::from(glimit), "saved GDTR limit");
        check_eq!(saved_u64(SMBASE, SAVE_GDTR + 8), gbase, "saved GDTR base");
        check_eq!(saved_u32(SMBASE, SAVE_IDTR + 4), u32::from(ilimit), "saved IDTR limit");
        check_eq!(saved_u64(SMBASE, SAVE_IDTR + 8), ibase, "saved IDTR base");
    }
}

test_case! {
    /// RSM brings back the long-mode control state SMM entry cleared: CR0, CR3, CR4,
    /// EFER and the descriptor tables read after RSM as before the SMI (APM 10.3.4).
    name = "cpu::smm_rsm_restores_control::long64", mode = Long64, path = Full, requires = requires::SMM;
    fn smm_rsm_restores_control() {
        install(SMBASE);
        // SAFETY: EFER exists in long mode.
        let efer = unsafe { cpu::rdmsr(x86::msr::IA32_EFER) };
        let (cr0, cr3, cr4) = (cpu::read_cr0(), cpu::read_cr3(), cpu::read_cr4());
        let tables = descriptor_tables();
        kvm_smi();
        check_eq!(entries(), 1, "SMM handler entries");
        check_eq!(cpu::read_cr0(), cr0, "CR0 after RSM");
        check_eq!(cpu::read_cr3(), cr3, "CR3 after RSM");
        check_eq!(cpu::read_cr4(), cr4, "CR4 after RSM");
        // SAFETY: as above.
        check_eq!(unsafe { cpu::rdmsr(x86::msr::IA32_EFER) }, efer, "EFER after RSM");
        check!(descriptor_tables() == tables, "GDTR or IDTR changed across the SMI");
    }
}

static CPL3_SMI: AtomicU32 = AtomicU32::new(0);

extern "C" fn smi_from_cpl3(_: u64) {
    let ok = request(service::SMI, [0; 4]).is_ok();
    let cs = cpu::read_cs();
    CPL3_SMI.store(u32::from(ok) << 16 | u32::from(cs), SeqCst);
}

test_case! {
    /// An SMI taken at CPL3 saves the CPL3 code selector and RSM returns to CPL3 (APM
    /// 10.3.4: RSM restores the interrupted privilege level from the state-save area).
    name = "cpu::smm_smi_at_cpl3::cpl3", mode = Long64, path = Full, requires = requires::SMM;
    fn smm_smi_at_cpl3() {
        install(SMBASE);
        let e = call_at_cpl3(smi_from_cpl3, 0);
        check!(e.is_none(), "the CPL3 side raised {:?}", e);
        let got = CPL3_SMI.load(SeqCst);
        check_eq!(got >> 16, 1, "the SMI service answered the CPL3 request");
        check_eq!(entries(), 1, "SMM handler entries");
        check_eq!(got & 0xffff, u32::from(hvprobe_rt::abi::selector::USER_CODE64), "CS after RSM, at CPL3");
        check_eq!(saved_u16(SMBASE, SAVE_CS), hvprobe_rt::abi::selector::USER_CODE64, "saved CS selector");
    }
}

static RSM_CPL3_RAN: AtomicU32 = AtomicU32::new(0);

extern "C" fn rsm_at_cpl3(_: u64) {
    RSM_CPL3_RAN.store(1, SeqCst);
    // SAFETY: RSM outside SMM raises #UD, which the CPL3 trampoline catches.
    unsafe { core::arch::asm!("rsm", options(nostack)) };
}

test_case! {
    /// RSM outside SMM raises #UD (APM Vol. 3 RSM; SDM Vol. 2B RSM).
    name = "cpu::smm_rsm_outside::long64", mode = Long64, path = Full;
    fn smm_rsm_outside() {
        let e = catch!("rsm");
        check!(e.is_some(), "RSM outside SMM raised no exception at CPL0");
        check_exception!(e, exception::UD, None);
    }
}

test_case! {
    /// RSM outside SMM raises #UD at CPL3 too (APM Vol. 3 RSM).
    name = "cpu::smm_rsm_outside::cpl3", mode = Long64, path = Full;
    fn smm_rsm_outside_cpl3() {
        let e = call_at_cpl3(rsm_at_cpl3, 0);
        check_eq!(RSM_CPL3_RAN.load(SeqCst), 1, "the CPL3 function ran");
        check!(e.is_some(), "RSM outside SMM raised no exception at CPL3");
        check_exception!(e, exception::UD, None);
    }
}
