//! The host side of the guest's devices: the console, the two register-file test
//! devices, the byte sinks of the UART and the MMIO FIFO, and the ACPI PM timer. Anything
//! else the guest touches is answered as an absent device would (reads of all ones,
//! writes dropped) and noted in the report.

use std::time::Instant;

use hvprobe_abi::{FNV1A32_INIT, fnv1a32, layout, port, sink};

/// Console text kept per run; a guest that floods the console is cut here, not the host.
pub const CONSOLE_LIMIT: usize = hvprobe_abi::limits::CONSOLE_CAPTURE;
/// Notes about accesses to absent devices kept per run.
pub const NOTE_LIMIT: usize = hvprobe_abi::limits::NOTES;

/// Where a byte-moving path delivers: how many bytes arrived and their running FNV-1a
/// digest, which the guest compares with its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sink {
    pub count: u64,
    pub digest: u32,
}

impl Default for Sink {
    fn default() -> Self {
        Sink { count: 0, digest: FNV1A32_INIT }
    }
}

impl Sink {
    pub fn push(&mut self, bytes: &[u8]) {
        self.count += bytes.len() as u64;
        self.digest = fnv1a32(self.digest, bytes);
    }

    /// The service SINK's answer: the count in bits 63:32, the digest in 31:0.
    pub fn packed(&self) -> u64 {
        (self.count.min(u32::MAX.into()) << 32) | u64::from(self.digest)
    }
}

/// The 16550's line status when it can take a byte: THRE[5] and TEMT[6].
const UART_LSR_IDLE: u8 = 0x60;
/// Its interrupt identification with nothing pending.
const UART_IIR_NONE: u8 = 0x01;

pub struct Devices {
    pub console: Vec<u8>,
    /// Every byte written to the console, kept or not.
    pub console_total: u64,
    pub console_truncated: bool,
    pub port_regs: [u8; port::TEST_IO_LEN as usize],
    pub mmio_regs: [u8; 256],
    /// The UART's registers other than THR/LSR/IIR (what the guest wrote, read back).
    pub uart_regs: [u8; 8],
    /// The byte sinks, by `hvprobe_abi::sink` number; the shared ring's thread keeps its
    /// own, so `sinks[sink::RING]` stays empty.
    pub sinks: [Sink; sink::COUNT],
    /// Time zero of the PM timer.
    pub epoch: Instant,
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
            uart_regs: [0; 8],
            sinks: [Sink::default(); sink::COUNT],
            epoch: Instant::now(),
            notes: Vec::new(),
            notes_dropped: 0,
        }
    }
}

impl Devices {
    /// The per-run captures (console, notes), leaving the device registers, which belong
    /// to the VM for as long as it lives and travel in its snapshots.
    pub fn take_captures(&mut self) -> Devices {
        let mut captures = Devices {
            port_regs: self.port_regs,
            mmio_regs: self.mmio_regs,
            uart_regs: self.uart_regs,
            sinks: self.sinks,
            epoch: self.epoch,
            ..Devices::default()
        };
        std::mem::swap(&mut captures.console, &mut self.console);
        std::mem::swap(&mut captures.notes, &mut self.notes);
        captures.console_total = std::mem::take(&mut self.console_total);
        captures.console_truncated = std::mem::take(&mut self.console_truncated);
        captures.notes_dropped = std::mem::take(&mut self.notes_dropped);
        captures
    }

    pub(crate) fn note(&mut self, text: String) {
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
            port::COALESCED_PIO => self.sinks[sink::COALESCED as usize].push(data),
            // THR with DLAB clear (LCR bit 7): one byte per OUT, the low byte of a wider one.
            port::UART if self.uart_regs[3] & 0x80 == 0 => self.sinks[sink::UART as usize].push(&data[..1]),
            p if (port::UART..port::UART + 8).contains(&p) => self.uart_regs[(p - port::UART) as usize] = data[0],
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
            p if (port::UART..port::UART + 8).contains(&p) => {
                data.fill(0);
                data[0] = match p - port::UART {
                    2 => UART_IIR_NONE,
                    5 => UART_LSR_IDLE,
                    i => self.uart_regs[i as usize],
                };
            }
            port::PM_TIMER if data.len() == 4 => data.copy_from_slice(&self.pm_timer().to_le_bytes()),
            p if p == port::COALESCED_PIO + 4 && data.len() == 4 => {
                data.copy_from_slice(&self.coalesced_count().to_le_bytes())
            }
            _ => {
                data.fill(0xff);
                self.note(format!("in from port {port:#x}, {} bytes: no device", data.len()));
            }
        }
    }

    /// The coalesced FIFO's count register: its sink's byte count, modulo 2^32.
    fn coalesced_count(&self) -> u32 {
        self.sinks[sink::COALESCED as usize].count as u32
    }

    /// The PM timer's count: ticks at [`hvprobe_abi::PM_TIMER_HZ`] since the VM's
    /// devices were made, modulo 2^32.
    fn pm_timer(&self) -> u32 {
        let ns = self.epoch.elapsed().as_nanos();
        (ns * u128::from(hvprobe_abi::PM_TIMER_HZ) / 1_000_000_000) as u32
    }

    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        if addr == layout::MMIO_FIFO {
            self.sinks[sink::FIFO as usize].push(data);
        } else if addr == layout::COALESCED_MMIO {
            self.sinks[sink::COALESCED as usize].push(data);
        } else if let Some(offset) = mmio_test_offset(addr, data.len()) {
            for (i, b) in data.iter().enumerate() {
                self.mmio_regs[(offset + i) & 0xff] = *b;
            }
        } else {
            self.note(format!("MMIO write to {addr:#x}, {} bytes {data:02x?}: no device", data.len()));
        }
    }

    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        if addr == layout::MMIO_FIFO + 8 {
            data.fill(0);
            data[0] = 1;
        } else if addr == layout::COALESCED_MMIO + 8 && data.len() == 4 {
            data.copy_from_slice(&self.coalesced_count().to_le_bytes());
        } else if let Some(offset) = mmio_test_offset(addr, data.len()) {
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

/// The offset into the MMIO test device's register file (taken modulo 256 by the
/// callers) of an access to its first page or to its two-page crossing window.
fn mmio_test_offset(addr: u64, len: usize) -> Option<usize> {
    let within = |base: u64, size: u64| {
        let offset = addr.checked_sub(base)?;
        (offset + len as u64 <= size).then_some(offset as usize)
    };
    within(layout::MMIO_TEST_BASE, layout::MMIO_TEST_SIZE)
        .or_else(|| within(layout::MMIO_CROSS, layout::MMIO_CROSS_SIZE))
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

    #[test]
    fn the_uart_and_the_fifo_feed_their_sinks() {
        let mut d = Devices::default();
        let mut b = [0; 1];
        d.port_read(port::UART + 5, &mut b);
        assert_eq!(b, [UART_LSR_IDLE]);
        d.port_write(port::UART, b"h");
        d.port_write(port::UART + 3, &[0x80]);
        d.port_write(port::UART, &[9]);
        assert_eq!(d.sinks[sink::UART as usize].count, 1, "with DLAB set, port 0 is the divisor latch");
        d.port_read(port::UART, &mut b);
        assert_eq!(b, [9]);
        d.mmio_write(layout::MMIO_FIFO, b"ab");
        d.mmio_write(layout::MMIO_FIFO, b"cdef");
        assert_eq!(d.sinks[sink::FIFO as usize], Sink { count: 6, digest: fnv1a32(FNV1A32_INIT, b"abcdef") });
        assert_eq!(d.sinks[sink::UART as usize].packed() >> 32, 1);
        assert!(d.notes.is_empty(), "{:?}", d.notes);
    }

    #[test]
    fn the_pm_timer_counts_at_its_rate() {
        let mut d = Devices { epoch: Instant::now() - std::time::Duration::from_secs(2), ..Devices::default() };
        let mut b = [0; 4];
        d.port_read(port::PM_TIMER, &mut b);
        let ticks = u64::from(u32::from_le_bytes(b));
        assert!((2 * hvprobe_abi::PM_TIMER_HZ..3 * hvprobe_abi::PM_TIMER_HZ).contains(&ticks), "{ticks}");
    }

    #[test]
    fn an_access_may_cross_the_crossing_windows_page() {
        let mut d = Devices::default();
        d.mmio_write(layout::MMIO_CROSS + 0xffc, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut b = [0; 8];
        d.mmio_read(layout::MMIO_CROSS + 0xffc, &mut b);
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
        d.mmio_read(layout::MMIO_TEST_BASE, &mut b[..4]);
        assert_eq!(b[..4], [5, 6, 7, 8], "the window mirrors the same registers");
    }
}
