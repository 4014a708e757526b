//! The guest side of the host protocol: each message is one `out` of its address.

use core::fmt;

use hvprobe_abi::proto::{self, Header, Str};
use hvprobe_abi::{layout, port};

fn str_ref(s: &str) -> Str {
    Str { addr: s.as_ptr() as u64, len: s.len() as u64 }
}

/// Hands the message at `msg` to the host. Memory is identity-mapped, so the guest-virtual
/// address of a stack or static object is its guest-physical address.
/// CPL0 rings the port, CPL3 the MMIO doorbell (see `layout::PROTOCOL_MMIO`).
fn send<T>(msg: &mut T) {
    let addr = msg as *mut T as u64;
    debug_assert!(addr <= u32::MAX as u64);
    if crate::cpu::read_cs() & 3 == 3 {
        // SAFETY: the doorbell is identity-mapped MMIO; the write only makes the host read
        // (and, for a service, write back into) `msg`, which is live and ours.
        unsafe { core::ptr::write_volatile(layout::PROTOCOL_MMIO as *mut u32, addr as u32) };
    } else {
        // SAFETY: as above, through the protocol port.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") port::PROTOCOL, in("eax") addr as u32);
        }
    }
}

/// Sends a line of text to the run's log.
pub fn log(text: &str) {
    let mut msg = proto::Log { header: Header { magic: proto::MAGIC, kind: proto::KIND_LOG }, text: str_ref(text) };
    send(&mut msg);
}

/// Records a named measurement (e.g. `cpuid` in `cycles`).
pub fn metric(name: &str, unit: &str, value: u64) {
    let mut msg = proto::Metric {
        header: Header { magic: proto::MAGIC, kind: proto::KIND_METRIC },
        name: str_ref(name),
        unit: str_ref(unit),
        value,
    };
    send(&mut msg);
}

/// Why a service request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceError {
    Unknown,
    Failed,
    Other(u32),
}

/// Asks the host for a service (see `hvprobe_abi::proto::service`).
pub fn service(id: u32, args: [u64; 4]) -> Result<u64, ServiceError> {
    let mut msg = proto::Service {
        header: Header { magic: proto::MAGIC, kind: proto::KIND_SERVICE },
        service: id,
        status: u32::MAX,
        args,
        result: 0,
    };
    send(&mut msg);
    // SAFETY: the host wrote the fields during the `out`; read them as memory that changed
    // behind the compiler's back.
    let (status, result) = unsafe { (core::ptr::read_volatile(&msg.status), core::ptr::read_volatile(&msg.result)) };
    match status {
        proto::SERVICE_OK => Ok(result),
        proto::SERVICE_UNKNOWN => Err(ServiceError::Unknown),
        proto::SERVICE_FAILED => Err(ServiceError::Failed),
        other => Err(ServiceError::Other(other)),
    }
}

fn verdict(status: u32, file: &str, line: u32, message: &str, values: Option<(u64, u64)>, fault_rip: Option<u64>) -> ! {
    let (expected, actual) = values.unwrap_or((0, 0));
    let mut flags = if values.is_some() { proto::VERDICT_HAS_VALUES } else { 0 };
    if fault_rip.is_some() {
        flags |= proto::VERDICT_HAS_FAULT_RIP;
    }
    let mut msg = proto::Verdict {
        header: Header { magic: proto::MAGIC, kind: proto::KIND_VERDICT },
        status,
        line,
        file: str_ref(file),
        message: str_ref(message),
        flags,
        _reserved: 0,
        expected,
        actual,
        fault_rip: fault_rip.unwrap_or(0),
    };
    send(&mut msg);
    // The host stops the vCPU at a verdict; should it resume us anyway, stay put.
    loop {
        core::hint::spin_loop();
    }
}

/// Ends the test as passed.
pub fn pass() -> ! {
    verdict(proto::STATUS_PASS, "", 0, "", None, None)
}

/// Ends the test as failed; `values` are (expected, actual).
pub fn fail(file: &str, line: u32, message: &str, values: Option<(u64, u64)>) -> ! {
    verdict(proto::STATUS_FAIL, file, line, message, values, None)
}

/// Ends the test as failed by an exception nobody expected at `rip`.
pub fn fail_at_fault(file: &str, line: u32, message: &str, rip: u64) -> ! {
    verdict(proto::STATUS_FAIL, file, line, message, None, Some(rip))
}

/// Ends the test as skipped with a reason.
pub fn skip(file: &str, line: u32, reason: &str) -> ! {
    verdict(proto::STATUS_SKIP, file, line, reason, None, None)
}

/// A fixed buffer for formatting one message without an allocator. Text past its capacity
/// is cut and marked with "...".
pub struct MessageBuf {
    buf: [u8; 512],
    len: usize,
}

impl MessageBuf {
    pub const fn new() -> Self {
        MessageBuf { buf: [0; 512], len: 0 }
    }

    /// The formatted text, cut to capacity.
    pub fn format(args: fmt::Arguments) -> Self {
        let mut buf = Self::new();
        buf.append(args);
        buf
    }

    /// Appends formatted text, cut to the remaining capacity.
    pub fn append(&mut self, args: fmt::Arguments) {
        let _ = fmt::write(self, args);
    }

    pub fn as_str(&self) -> &str {
        // Only whole `str`s are copied in (cut at a char boundary), so this cannot fail.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("<message not UTF-8>")
    }
}

impl Default for MessageBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for MessageBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        if s.len() <= room {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
            return Ok(());
        }
        let mut cut = room.saturating_sub(3);
        while cut > 0 && !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.buf[self.len..self.len + cut].copy_from_slice(&s.as_bytes()[..cut]);
        self.len += cut;
        let dots = (self.buf.len() - self.len).min(3);
        self.buf[self.len..self.len + dots].copy_from_slice(&b"..."[..dots]);
        self.len += dots;
        Err(fmt::Error)
    }
}

/// Formats and logs a line: `log!("x = {}", x)`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        $crate::proto::log($crate::proto::MessageBuf::format(format_args!($($arg)*)).as_str());
    }};
}

/// Fails the test unless `actual == expected`, reporting file, line, both values and the
/// expressions compared. Values are compared as given and reported as u64 when they
/// convert (integers), so reports show the exact bits.
#[macro_export]
macro_rules! check_eq {
    ($actual:expr, $expected:expr $(,)?) => {
        $crate::check_eq!($actual, $expected, "")
    };
    ($actual:expr, $expected:expr, $($arg:tt)+) => {{
        let actual = $actual;
        let expected = $expected;
        if actual != expected {
            let mut buf = $crate::proto::MessageBuf::format(format_args!(
                "check_eq failed: {} == {}: actual {:x?}, expected {:x?}. ",
                stringify!($actual),
                stringify!($expected),
                actual,
                expected
            ));
            buf.append(format_args!($($arg)+));
            #[allow(unused_imports)]
            use $crate::testcase::{IntValue as _, NoValue as _};
            let values = (&$crate::testcase::Probe(&expected))
                .value()
                .zip((&$crate::testcase::Probe(&actual)).value());
            $crate::proto::fail(file!(), line!(), buf.as_str(), values);
        }
    }};
}

/// Fails the test unless `cond` holds, with a formatted message.
#[macro_export]
macro_rules! check {
    ($cond:expr $(,)?) => {
        $crate::check!($cond, "")
    };
    ($cond:expr, $($arg:tt)+) => {{
        if !$cond {
            let mut buf = $crate::proto::MessageBuf::format(format_args!("check failed: {}. ", stringify!($cond)));
            buf.append(format_args!($($arg)+));
            $crate::proto::fail(file!(), line!(), buf.as_str(), None);
        }
    }};
}

/// Fails the test unless `cond` holds, reporting `expected` and `actual` as the compared
/// values and keeping them out of the message. For checks of live values (TSC readings,
/// addresses): the message, which failure signatures match, then reads the same in
/// every run, while the report still shows the numbers.
#[macro_export]
macro_rules! check_values {
    ($cond:expr, $expected:expr, $actual:expr, $label:literal $(,)?) => {{
        if !$cond {
            $crate::proto::fail(
                file!(),
                line!(),
                concat!("check failed: ", stringify!($cond), ". ", $label),
                Some(($expected as u64, $actual as u64)),
            );
        }
    }};
}

/// Ends the test as skipped: `skip!("no x2APIC")`.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)+) => {{
        $crate::proto::skip(file!(), line!(), $crate::proto::MessageBuf::format(format_args!($($arg)+)).as_str())
    }};
}

/// Fails the test if `$caught` (a `catch!` or `call_at_cpl3` result) holds an exception,
/// reporting it with its faulting RIP and instruction bytes.
#[macro_export]
macro_rules! check_no_exception {
    ($caught:expr $(,)?) => {{
        if let Some(e) = $caught {
            $crate::exception::fail_unexpected(file!(), line!(), &e);
        }
    }};
}

/// Checks that a [`catch!`](crate::catch) result is exactly the exception `vector` with
/// `error_code` (`None` for vectors without one), raised by the armed instruction.
#[macro_export]
macro_rules! check_exception {
    ($caught:expr, $vector:expr, $error_code:expr $(,)?) => {{
        let caught: Option<$crate::Exception> = $caught;
        let vector: u8 = $vector;
        match caught {
            None => $crate::proto::fail(
                file!(),
                line!(),
                concat!("expected an exception, none was raised by ", stringify!($caught)),
                Some((vector as u64, u64::MAX)),
            ),
            Some(e) => {
                $crate::check_eq!(e.vector, vector, "wrong vector ({})", $crate::exception::mnemonic(e.vector));
                $crate::check_eq!(
                    e.error_code,
                    $error_code,
                    "wrong error code for {}",
                    $crate::exception::mnemonic(vector)
                );
            }
        }
        caught.unwrap()
    }};
}
