//! The `test_case!` declaration: one static descriptor per case in `.hvprobe.tests`.

/// Converts a compared value to the u64 a verdict carries, when it is an integer.
pub trait AsValue {
    fn as_value(&self) -> Option<u64>;
}

macro_rules! as_value_int {
    ($($t:ty),*) => {$(
        impl AsValue for $t {
            fn as_value(&self) -> Option<u64> { Some(*self as u64) }
        }
    )*};
}
as_value_int!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl AsValue for bool {
    fn as_value(&self) -> Option<u64> {
        Some(*self as u64)
    }
}

impl<T: AsValue> AsValue for Option<T> {
    fn as_value(&self) -> Option<u64> {
        self.as_ref().and_then(AsValue::as_value)
    }
}

impl<T: AsValue, E> AsValue for Result<T, E> {
    fn as_value(&self) -> Option<u64> {
        self.as_ref().ok().and_then(AsValue::as_value)
    }
}

/// Wraps a compared value so that `check_eq!` gets `Some(bits)` for integers and `None`
/// for anything else, by method resolution (integers match [`IntValue`] first).
pub struct Probe<'a, T>(pub &'a T);

pub trait IntValue {
    fn value(&self) -> Option<u64>;
}

impl<T: AsValue> IntValue for Probe<'_, T> {
    fn value(&self) -> Option<u64> {
        self.0.as_value()
    }
}

pub trait NoValue {
    fn value(&self) -> Option<u64>;
}

impl<T> NoValue for &Probe<'_, T> {
    fn value(&self) -> Option<u64> {
        None
    }
}

/// Declares a test case. The descriptor is all the host needs to list, filter and boot it.
///
/// ```ignore
/// test_case! {
///     /// CPUID leaf 0 returns the vendor string the host set (SDM Vol. 2A, CPUID).
///     name = "cpu::cpuid_vendor::long64", mode = Long64, path = Full;
///     fn cpuid_vendor() { ... }
/// }
/// // 16- and 32-bit cases name an assembly label instead of a body:
/// test_case! { name = "cpu::boot::real16", mode = Real16, path = Hw; entry = boot_real16 }
/// // The same check at CPL0 and from CPL3: one body, two cases, NAME::long64 and NAME::cpl3
/// // (the body gets `false` and `true`; both start at CPL0, which sets up what CPL3 needs).
/// test_case! {
///     name = "cpu::sse_arith", cpl = [0, 3], mode = Long64, path = Hw;
///     fn sse_arith(cpl3: bool) { ... }
/// }
/// ```
///
/// Options after `path`: `requires = abi::requires::X | ...`, `timeout_ms = N`,
/// `flags = abi::flags::X`, `vcpus = N` (the other vCPUs idle in `rt::smp`),
/// `migrate = Restore | CrossProcess | RandomPauses(n) | Live` (how the host moves the
/// guest while it runs: `abi::migrate`), `quirks_off = abi::quirks::X | ...` (KVM quirks
/// the host disables), `cpuid_clear = [(leaf, subleaf, EDX, mask), ...]` (bits the host
/// clears from the case's CPUID table; `ANY` as subleaf edits every subleaf).
#[macro_export]
macro_rules! test_case {
    (
        $(#[$meta:meta])*
        name = $name:literal, cpl = [0, 3], mode = Long64, path = $path:ident
        $(, requires = $req:expr)? $(, timeout_ms = $to:expr)? $(, flags = $fl:expr)? $(, vcpus = $n:expr)?
        $(, migrate = $mig:ident $(($mign:expr))?)? $(, quirks_off = $q:expr)?
        $(, cpuid_clear = [$(($leaf:expr, $sub:tt, $reg:ident, $mask:expr)),* $(,)?])? ;
        fn $fn:ident($cpl3:ident: bool) $body:block
    ) => {
        $(#[$meta])*
        fn $fn($cpl3: bool) $body
        const _: () = {
            extern "C" fn at_cpl0() {
                $fn(false)
            }
            extern "C" fn at_cpl3() {
                $fn(true)
            }
            $crate::test_case!(@desc concat!($name, "::long64"), Long64, $path, [$($req)?], [$($to)?], [$($fl)?],
                [$($n)?], [$($crate::test_case!(@migrate $mig $(($mign))?))?], [$($q)?],
                [$($($crate::test_case!(@clear $leaf, $sub, $reg, $mask)),*)?], at_cpl0);
            $crate::test_case!(@desc concat!($name, "::cpl3"), Long64, $path, [$($req)?], [$($to)?], [$($fl)?],
                [$($n)?], [$($crate::test_case!(@migrate $mig $(($mign))?))?], [$($q)?],
                [$($($crate::test_case!(@clear $leaf, $sub, $reg, $mask)),*)?], at_cpl3);
        };
    };
    (
        $(#[$meta:meta])*
        name = $name:literal, mode = $mode:ident, path = $path:ident
        $(, requires = $req:expr)? $(, timeout_ms = $to:expr)? $(, flags = $fl:expr)? $(, vcpus = $n:expr)?
        $(, migrate = $mig:ident $(($mign:expr))?)? $(, quirks_off = $q:expr)?
        $(, cpuid_clear = [$(($leaf:expr, $sub:tt, $reg:ident, $mask:expr)),* $(,)?])? ;
        fn $fn:ident() $body:block
    ) => {
        $(#[$meta])*
        extern "C" fn $fn() $body
        $crate::test_case!(@desc $name, $mode, $path, [$($req)?], [$($to)?], [$($fl)?], [$($n)?],
            [$($crate::test_case!(@migrate $mig $(($mign))?))?], [$($q)?],
            [$($($crate::test_case!(@clear $leaf, $sub, $reg, $mask)),*)?], $fn);
    };
    (
        $(#[$meta:meta])*
        name = $name:literal, mode = $mode:ident, path = $path:ident
        $(, requires = $req:expr)? $(, timeout_ms = $to:expr)? $(, flags = $fl:expr)? $(, vcpus = $n:expr)?
        $(, migrate = $mig:ident $(($mign:expr))?)? $(, quirks_off = $q:expr)?
        $(, cpuid_clear = [$(($leaf:expr, $sub:tt, $reg:ident, $mask:expr)),* $(,)?])? ;
        entry = $entry:ident
    ) => {
        $crate::test_case!(@desc $name, $mode, $path, [$($req)?], [$($to)?], [$($fl)?], [$($n)?],
            [$($crate::test_case!(@migrate $mig $(($mign))?))?], [$($q)?],
            [$($($crate::test_case!(@clear $leaf, $sub, $reg, $mask)),*)?], $entry);
    };
    (@clear $leaf:expr, ANY, $reg:ident, $mask:expr) => {
        $crate::abi::CpuidClear::new($leaf, $crate::abi::CpuidClear::ANY_SUBLEAF, $crate::abi::CpuidClear::$reg, $mask)
    };
    (@clear $leaf:expr, $sub:expr, $reg:ident, $mask:expr) => {
        $crate::abi::CpuidClear::new($leaf, $sub, $crate::abi::CpuidClear::$reg, $mask)
    };
    (@migrate Restore) => { $crate::abi::migrate::RESTORE };
    (@migrate CrossProcess) => { $crate::abi::migrate::CROSS_PROCESS };
    (@migrate Live) => { $crate::abi::migrate::LIVE };
    (@migrate RandomPauses($n:expr)) => { $crate::abi::migrate::random_pauses($n) };
    (@desc $name:expr, $mode:ident, $path:ident, [$($req:expr)?], [$($to:expr)?], [$($fl:expr)?], [$($n:expr)?],
        [$($mig:expr)?], [$($q:expr)?], [$($clear:expr),*], $entry:expr) => {
        const _: () = {
            #[used]
            #[unsafe(link_section = ".hvprobe.tests")]
            static DESC: $crate::abi::TestDesc = $crate::abi::TestDesc {
                magic: $crate::abi::TestDesc::MAGIC,
                mode: $crate::abi::Mode::$mode as u8,
                path: $crate::abi::Path::$path as u8,
                vcpus: 0 $(+ $n)?,
                name: $crate::abi::fixed_str($name),
                file: $crate::abi::fixed_str(file!()),
                line: line!(),
                timeout_ms: 0 $(+ $to)?,
                requires: 0 $(| $req)?,
                flags: 0 $(| $fl)?,
                migrate: 0 $(| $mig)?,
                quirks_off: 0 $(| $q)?,
                cpuid_clear: $crate::abi::CpuidClear::table(&[$($clear),*]),
                entry: $entry,
            };
        };
    };
}
