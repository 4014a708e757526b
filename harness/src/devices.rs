//! The host side of the guest's devices: the console and the two register-file test
//! devices. Anything else the guest touches is answered as an absent device would
//! (reads of all ones, writes dropped) and noted in the report.

use hvprobe_abi::{layout, port};

/// Console text kept per run; a guest that floods the console is cut here, not the host.
pub const CONSOLE_LIMIT: usize = 64 * 1024;
/// Notes about accesses to absent devices kept per run.
pub const NOTE_LIMIT: usize = 64;

pub struct Devices {
    pub console: Vec<u8>,
    /// Every byte written to the console, kept or not.
    pub console_total: u64,
    pub console_truncated: bool,
    pub port_regs: [u8; port::TEST_IO_LEN as usize],
    pub mmio_regs: [u8; 256],
    pub notes: Vec<String>,
    pub notes_dropped: u64,
}

impl Default for Devices {
    fn default() -> Self {
        Devices {
            console: Vec::new(),
            console_total: 0,
            console_truncated: false,
            port_regs: [0; port::TEST_IO_LEN as usize],
            mmio_regs: [0; 256],
            notes: Vec::new(),
            notes_dropped: 0,
        }
    }
}

impl Devices {
    /// The per-run captures (console, notes), leaving the device registers, which belong
    /// to the VM for as long as it lives and travel in its snapshots.
    pub fn take_captures(&mut self) -> Devices {
        let mut captures = Devices { port_regs: self.port_regs, mmio_regs: self.mmio_regs, ..Devices::default() };
        std::mem::swap(&mut captures.console, &mut self.console);
        std::mem::swap(&mut captures.notes, &mut self.notes);
        captures.console_total = std::mem::take(&mut self.console_total);
        captures.console_truncated = std::mem::take(&mut self.console_truncated);
        captures.notes_dropped = std::mem::take(&mut self.notes_dropped);
        captures
    }

    fn note(&mut self, text: String) {
        if self.notes.len() < NOTE_LIMIT {
            self.notes.push(text);
        } else {
            self.notes_dropped += 1;
        }
    }

    /// One OUT of `data.len()` bytes (1, 2 or 4) to `port`. The protocol port is the
    /// run loop's, not a device's.
    pub fn port_write(&mut self, port: u16, data: &[u8]) {
        match port {
            port::CONSOLE => {
                // The console is a byte port: a wider OUT carries its low byte, as on Bochs.
                self.console_total += 1;
                if self.console.len() < CONSOLE_LIMIT {
                    self.console.push(data[0]);
                } else {
                    self.console_truncated = true;
                }
            }
            p if test_io_range(p, data.len()) => {
                let at = (p - port::TEST_IO) as usize;
                self.port_regs[at..at + data.len()].copy_from_slice(data);
            }
            _ => self.note(format!("out to port {port:#x}, {} bytes {data:02x?}: no device", data.len())),
        }
    }

    pub fn port_read(&mut self, port: u16, data: &mut [u8]) {
        match port {
            // Bochs's debug console reads back its own port number: a presence check.
            port::CONSOLE => data.fill(0xe9),
            p if test_io_range(p, data.len()) => {
                let at = (p - port::TEST_IO) as usize;
                data.copy_from_slice(&self.port_regs[at..at + data.len()]);
            }
            _ => {
                data.fill(0xff);
                self.note(format!("in from port {port:#x}, {} bytes: no device", data.len()));
            }
        }
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        if let Some(offset) = mmio_test_offset(addr, data.len()) {
            for (i, b) in data.iter().enumerate() {
                self.mmio_regs[(offset + i) & 0xff] = *b;
            }
        } else {
            self.note(format!("MMIO write to {addr:#x}, {} bytes {data:02x?}: no device", data.len()));
        }
    }

    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        if let Some(offset) = mmio_test_offset(addr, data.len()) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.mmio_regs[(offset + i) & 0xff];
            }
        } else {
            data.fill(0xff);
            self.note(format!("MMIO read from {addr:#x}, {} bytes: no device", data.len()));
        }
    }
}

fn test_io_range(p: u16, len: usize) -> bool {
    p >= port::TEST_IO && (p - port::TEST_IO) as usize + len <= port::TEST_IO_LEN as usize
}

fn mmio_test_offset(addr: u64, len: usize) -> Option<usize> {
    let offset = addr.checked_sub(layout::MMIO_TEST_BASE)?;
    (offset + len as u64 <= layout::MMIO_TEST_SIZE).then_some(offset as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_register_file_is_byte_addressed_little_endian() {
        let mut d = Devices::default();
        d.port_write(port::TEST_IO + 2, &[0x33, 0x44]);
        let mut b = [0; 4];
        d.port_read(port::TEST_IO, &mut b);
        assert_eq!(b, [0, 0, 0x33, 0x44]);
        d.port_read(port::TEST_IO + 6, &mut b);
        assert_eq!(b, [0xff; 4], "access past the device end reads as absent");
        assert_eq!(d.notes.len(), 1);
    }

    #[test]
    fn mmio_mirrors_every_256_bytes_and_console_is_capped() {
        let mut d = Devices::default();
        d.mmio_write(layout::MMIO_TEST_BASE + 0xff, &[1, 2]);
        let mut b = [0; 1];
        d.mmio_read(layout::MMIO_TEST_BASE + 0x100, &mut b);
        assert_eq!(b, [2], "a write past byte 255 wraps to byte 0");
        for _ in 0..CONSOLE_LIMIT + 10 {
            d.port_write(port::CONSOLE, b"x");
        }
        assert_eq!(d.console.len(), CONSOLE_LIMIT);
        assert_eq!(d.console_total, CONSOLE_LIMIT as u64 + 10);
        assert!(d.console_truncated);
    }
}
