//! Console output on the debug port (0xe9). One REP OUTSB per string: cheap where string
//! I/O is batched, one exit per byte where it is not (PVM). For test diagnostics the
//! protocol's `log!` (one exit per line) is usually the better choice.

use hvprobe_abi::port;

/// Writes `text` to the console. At CPL3 it needs IOPL 3 (which the harness sets).
pub fn write(text: &str) {
    // SAFETY: reads `text`, writes only the console port.
    unsafe {
        core::arch::asm!("rep outsb", inout("rcx") text.len() => _, inout("rsi") text.as_ptr() => _,
                         in("dx") port::CONSOLE, options(nostack, readonly));
    }
}

/// `print!` to the console, formatted without an allocator.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        $crate::console::write($crate::proto::MessageBuf::format(format_args!($($arg)*)).as_str());
    }};
}
