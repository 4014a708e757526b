//! The machine a test case starts in: descriptor tables, page tables, and the register
//! state of each CPU mode. Built by the host so the guest executes no set-up code.

use hvprobe_abi::{BootHeader, Mode, layout, selector};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use crate::{Error, GuestMemory, Payload, TestCase};

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_ACCESSED: u64 = 1 << 5;
const PTE_DIRTY: u64 = 1 << 6;
const PTE_LARGE: u64 = 1 << 7;
/// Every page is user-accessible so CPL3 cases can use the same identity map; the
/// harness leaves CR4.SMEP/SMAP clear. Accessed is preset at every level and Dirty in
/// the leaves (SDM Vol. 3A 4.8, APM Vol. 2 5.4.2): the first access to a page then
/// writes no paging entry, which under a shadow MMU (PVM) is a trapped, emulated write
/// per page. The A/D cases clear the bits themselves before they look.
const PTE_FLAGS: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_USER | PTE_ACCESSED;
const PTE_LEAF: u64 = PTE_FLAGS | PTE_DIRTY;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;
const RFLAGS_IOPL3: u64 = 3 << 12;

/// Writes the GDT, TSS, IDT, page tables and the payload's segments into fresh memory.
pub fn build(mem: &GuestMemory, payload: &Payload) -> Result<(), Error> {
    for seg in &payload.segments {
        // The rest of the segment (BSS) is already zero: memory is freshly mapped.
        mem.write(seg.addr, &seg.data)?;
    }
    for (i, desc) in gdt().iter().enumerate() {
        mem.write_u64(layout::GDT + 8 * i as u64, *desc)?;
    }
    // 64-bit TSS: RSP0 at 4, IST1 at 36, I/O map base at 102 (no bitmap: 104 = limit + 1).
    mem.write_u64(layout::TSS + 4, layout::RSP0_STACK_TOP)?;
    mem.write_u64(layout::TSS + 36, layout::IST1_STACK_TOP)?;
    mem.write(layout::TSS + 102, &104u16.to_le_bytes())?;
    for vector in 0..256u64 {
        let handler = payload.vector_stubs + vector * BootHeader::VECTOR_STRIDE;
        let [low, high] = idt_gate(handler, vector as u8);
        mem.write_u64(layout::IDT + vector * 16, low)?;
        mem.write_u64(layout::IDT + vector * 16 + 8, high)?;
    }
    build_page_tables(mem)
}

fn gdt() -> [u64; selector::GDT_ENTRIES] {
    let tss = layout::TSS;
    let tss_low = 0x67 | ((tss & 0xff_ffff) << 16) | (0x8b << 40) | (((tss >> 24) & 0xff) << 56);
    [
        0,
        0x00af_9b00_0000_ffff, // 0x08: 64-bit code, DPL 0
        0x00cf_9300_0000_ffff, // 0x10: flat data, DPL 0
        0x00cf_9b00_0000_ffff, // 0x18: flat 32-bit code, DPL 0
        0x00cf_f300_0000_ffff, // 0x20: flat data, DPL 3
        0x00af_fb00_0000_ffff, // 0x28: 64-bit code, DPL 3
        tss_low,               // 0x30: busy 64-bit TSS
        tss >> 32,
    ]
}

/// A 64-bit interrupt gate. #BP, #OF and USER_INT_VECTOR get DPL 3 so INT3, INTO and
/// INT 0x81 work from CPL3; NMI,
/// #DF and #MC run on IST1 so they survive a broken stack.
fn idt_gate(handler: u64, vector: u8) -> [u64; 2] {
    let dpl: u64 = if matches!(vector, 3 | 4 | hvprobe_abi::USER_INT_VECTOR) { 3 } else { 0 };
    let ist: u64 = if matches!(vector, 2 | 8 | 18) { 1 } else { 0 };
    let type_attr = 0x8e | (dpl << 5);
    let low = (handler & 0xffff)
        | ((selector::CODE64 as u64) << 16)
        | (ist << 32)
        | (type_attr << 40)
        | (((handler >> 16) & 0xffff) << 48);
    [low, handler >> 32]
}

/// Identity map of 0-4 GiB: 2 MiB pages, except 4 KiB pages for the first 2 MiB.
fn build_page_tables(mem: &GuestMemory) -> Result<(), Error> {
    mem.write_u64(layout::PML4, layout::PDPT | PTE_FLAGS)?;
    for gib in 0..4u64 {
        let pd = layout::PD0 + gib * 0x1000;
        mem.write_u64(layout::PDPT + gib * 8, pd | PTE_FLAGS)?;
        for i in 0..512u64 {
            let addr = (gib << 30) | (i << 21);
            mem.write_u64(pd + i * 8, addr | PTE_LEAF | PTE_LARGE)?;
        }
    }
    mem.write_u64(layout::PD0, layout::PT0 | PTE_FLAGS)?;
    for i in 0..512u64 {
        mem.write_u64(layout::PT0 + i * 8, (i << 12) | PTE_LEAF)?;
    }
    Ok(())
}

fn segment(selector: u16, code: bool, dpl: u8, long: bool, big: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl,
        db: big as u8,
        s: 1,
        l: long as u8,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn real_segment(type_: u8) -> kvm_segment {
    kvm_segment { base: 0, limit: 0xffff, selector: 0, type_, present: 1, s: 1, ..Default::default() }
}

/// Sets `sregs` and returns the general registers for `case` to start in its mode.
pub fn cpu_state(sregs: &mut kvm_sregs, payload: &Payload, case: &TestCase) -> kvm_regs {
    let mut regs = kvm_regs { rflags: RFLAGS_RESERVED, ..Default::default() };
    match case.mode {
        Mode::Real16 => {
            sregs.cs = real_segment(0xb);
            for s in [&mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs, &mut sregs.ss] {
                *s = real_segment(0x3);
            }
            sregs.cr0 = CR0_ET;
            regs.rip = case.entry;
            regs.rsp = layout::LOW_STACK_TOP;
        }
        Mode::Prot32 => {
            set_tables(sregs);
            sregs.cs = segment(selector::CODE32, true, 0, false, true);
            set_data_segments(sregs, segment(selector::DATA, false, 0, false, true));
            sregs.cr0 = CR0_PE | CR0_ET;
            regs.rip = case.entry;
            regs.rsp = layout::LOW_STACK_TOP;
        }
        Mode::Long64 | Mode::User64 => {
            set_tables(sregs);
            sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
            sregs.cr3 = layout::PML4;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            regs.rip = payload.entry64;
            regs.rdi = case.desc_addr;
            if case.mode == Mode::Long64 {
                sregs.cs = segment(selector::CODE64, true, 0, true, false);
                set_data_segments(sregs, segment(selector::DATA, false, 0, false, true));
                regs.rsp = layout::KERNEL_STACK_TOP;
            } else {
                sregs.cs = segment(selector::USER_CODE64, true, 3, true, false);
                set_data_segments(sregs, segment(selector::USER_DATA, false, 3, false, true));
                regs.rsp = layout::USER_STACK_TOP;
                regs.rflags |= RFLAGS_IOPL3;
            }
        }
    }
    regs
}

/// Sets `sregs` and returns the general registers for application processor `index`:
/// 64-bit CPL0 at the runtime's entry, with RDI = the case's descriptor, RSI = `index`
/// and its own stack.
pub fn ap_state(sregs: &mut kvm_sregs, payload: &Payload, case: &TestCase, index: u16) -> kvm_regs {
    let long = TestCase { mode: Mode::Long64, ..case.clone() };
    let mut regs = cpu_state(sregs, payload, &long);
    regs.rsi = index.into();
    regs.rsp = layout::ap_stack_top(index);
    regs
}

fn set_data_segments(sregs: &mut kvm_sregs, seg: kvm_segment) {
    sregs.ds = seg;
    sregs.es = seg;
    sregs.fs = seg;
    sregs.gs = seg;
    sregs.ss = seg;
}

fn set_tables(sregs: &mut kvm_sregs) {
    sregs.gdt.base = layout::GDT;
    sregs.gdt.limit = (8 * selector::GDT_ENTRIES - 1) as u16;
    sregs.idt.base = layout::IDT;
    sregs.idt.limit = 256 * 16 - 1;
    sregs.tr = kvm_segment {
        base: layout::TSS,
        limit: 0x67,
        selector: selector::TSS,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_segment { type_: 0x2, present: 1, unusable: 1, ..Default::default() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_tss_descriptor_points_at_the_tss() {
        let g = gdt();
        let low = g[(selector::TSS / 8) as usize];
        let base = ((low >> 16) & 0xff_ffff) | (((low >> 56) & 0xff) << 24);
        assert_eq!(base, layout::TSS);
        assert_eq!(low & 0xffff, 0x67);
    }

    #[test]
    fn idt_gate_encodes_offset_selector_dpl_ist() {
        let [low, high] = idt_gate(0x1234_5678_9abc_def0, 3);
        assert_eq!(low & 0xffff, 0xdef0);
        assert_eq!((low >> 48) & 0xffff, 0x9abc);
        assert_eq!(high, 0x1234_5678);
        assert_eq!((low >> 16) & 0xffff, selector::CODE64 as u64);
        assert_eq!((low >> 40) & 0xff, 0xee, "present, DPL 3, interrupt gate");
        let [low, _] = idt_gate(0, 8);
        assert_eq!((low >> 32) & 7, 1, "#DF on IST1");
    }
}
