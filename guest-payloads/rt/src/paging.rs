//! Access to the harness-built page tables (4-level, identity map).

/// The page-table entry that maps `addr`, which must lie in the first 2 MiB (mapped with
/// 4 KiB pages). Found by walking from CR3, so it is whatever the hardware would use.
pub fn pte_mut(addr: u64) -> &'static mut u64 {
    assert!(addr < hvprobe_abi::layout::IMAGE_END, "only the first 2 MiB is 4 KiB-mapped");
    let mut table = crate::cpu::read_cr3() & !0xfff;
    for shift in [39u32, 30, 21] {
        let index = (addr >> shift) & 0x1ff;
        // SAFETY: the harness builds the tables in identity-mapped RAM; each entry on the
        // walk to a 4 KiB page is present and points at the next table.
        let entry = unsafe { *((table + index * 8) as *const u64) };
        table = entry & FRAME;
    }
    let index = (addr >> 12) & 0x1ff;
    // SAFETY: as above; the last table maps 4 KiB pages, and the entry lives as long as the VM.
    unsafe { &mut *((table + index * 8) as *mut u64) }
}

/// The page-directory entry that maps `addr` with a 2 MiB page (bit 7, PS), for an
/// address above the 4 KiB-mapped first 2 MiB and below 4 GiB. Found by walking from CR3.
pub fn pde_mut(addr: u64) -> &'static mut u64 {
    assert!((hvprobe_abi::layout::IMAGE_END..1 << 32).contains(&addr), "only 2 MiB pages below 4 GiB");
    let mut table = crate::cpu::read_cr3() & !0xfff;
    for shift in [39u32, 30] {
        let index = (addr >> shift) & 0x1ff;
        // SAFETY: the harness builds the tables in identity-mapped RAM; the PML4E and
        // PDPTE on the walk are present and point at the next table.
        let entry = unsafe { *((table + index * 8) as *const u64) };
        table = entry & FRAME;
    }
    let index = (addr >> 21) & 0x1ff;
    // SAFETY: as above; the entry lives as long as the VM.
    unsafe { &mut *((table + index * 8) as *mut u64) }
}

/// Runs `body` while the PDE of `addr` holds `edit(old)`, as [`with_pte`] does for a PTE.
pub fn with_pde<R>(addr: u64, edit: impl FnOnce(u64) -> u64, body: impl FnOnce() -> R) -> R {
    let pde = pde_mut(addr);
    let saved = *pde;
    *pde = edit(saved);
    invlpg(addr);
    let result = body();
    *pde = saved;
    invlpg(addr);
    result
}

pub const PRESENT: u64 = 1 << 0;
/// The physical frame address bits of an entry.
pub const FRAME: u64 = 0x000f_ffff_ffff_f000;
pub const WRITABLE: u64 = 1 << 1;
pub const USER: u64 = 1 << 2;

/// Drops the TLB entry for `addr` after its PTE changed.
pub fn invlpg(addr: u64) {
    // SAFETY: invalidating a TLB entry has no effect beyond making the next access walk.
    unsafe { core::arch::asm!("invlpg [{}]", in(reg) addr, options(nostack)) };
}

/// A page of the image's BSS that tests may remap, protect or unmap through its PTE: it is
/// in the 4 KiB-mapped region and nothing else uses it.
pub fn scratch_page() -> u64 {
    #[repr(C, align(4096))]
    struct Page([u8; 4096]);
    static mut SCRATCH: Page = Page([0; 4096]);
    &raw const SCRATCH as u64
}

/// Runs `body` while the PTE of `addr` holds `edit(old)`, flushing the TLB entry on the
/// way in and out, and restores the old entry afterwards.
pub fn with_pte<R>(addr: u64, edit: impl FnOnce(u64) -> u64, body: impl FnOnce() -> R) -> R {
    let pte = pte_mut(addr);
    let saved = *pte;
    *pte = edit(saved);
    invlpg(addr);
    let result = body();
    *pte = saved;
    invlpg(addr);
    result
}
