//! The IOAPIC at its default base, through its index and data registers (82093AA
//! datasheet, IOREGSEL and IOWIN).

/// The IOAPIC's default base address.
pub const BASE: u64 = 0xfec0_0000;

/// Reads IOAPIC register `index` (0x10 + 2n and 0x11 + 2n: redirection entry n).
pub fn read(index: u32) -> u32 {
    // SAFETY: the in-kernel IOAPIC's index and data registers, identity-mapped; selecting
    // and reading a register has no other effect.
    unsafe {
        (BASE as *mut u32).write_volatile(index);
        ((BASE + 0x10) as *const u32).read_volatile()
    }
}

/// Writes IOAPIC register `index`.
pub fn write(index: u32, value: u32) {
    // SAFETY: as for `read`; the caller chooses what the register holds.
    unsafe {
        (BASE as *mut u32).write_volatile(index);
        ((BASE + 0x10) as *mut u32).write_volatile(value);
    }
}
