//! The shape of an instruction that must raise #UD under a condition the harness leaves in
//! place (EFER.SVME clear, CR4.VMXE clear): per instruction, one case at CPL0 and its twin
//! at CPL3. RAX holds a page of the image that nothing else uses (the memory operand of
//! VMRUN, VMXON, VMPTRLD...) and RCX 0, so an instruction that wrongly runs touches nothing
//! that matters; it may change both registers, which the cases throw away. Before the CPL0 run, the
//! case's precondition is checked and so is every CPUID bit it clears (`cpuid_clear`).

macro_rules! ud_at_cpl0_and_cpl3 {
    (precondition = $pre:path, what = $what:literal;
     $($(#[$doc:meta])* $fn:ident, $fn3:ident, $case3:ident: $name:literal, $name3:literal, $bytes:literal
        $(, cpuid_clear = [$(($leaf:expr, $sub:expr, $reg:ident, $mask:expr)),+])?;)+) => {$(
        extern "C" fn $fn3(rax: u64) {
            // SAFETY: the instruction raises #UD (the case's point) or, on a deviating
            // hypervisor, acts on the scratch page and RCX; the CPL3 trampoline catches
            // either.
            unsafe {
                core::arch::asm!($bytes, inout("rax") rax => _, inout("rcx") 0u64 => _, options(nostack))
            };
        }

        hvprobe_rt::test_case! {
            $(#[$doc])*
            name = $name, mode = Long64, path = Full $(, cpuid_clear = [$(($leaf, $sub, $reg, $mask)),+])?;
            fn $fn() {
                $pre();
                $($(super::gated::check_cleared($leaf, $sub, hvprobe_rt::abi::CpuidClear::$reg, $mask);)+)?
                let e = hvprobe_rt::catch!($bytes, inout("rax") hvprobe_rt::paging::scratch_page() => _, inout("rcx") 0u64 => _);
                hvprobe_rt::check!(e.is_some(), "{} raised no exception at CPL0", $what);
                hvprobe_rt::check_exception!(e, hvprobe_rt::exception::UD, None);
            }
        }

        hvprobe_rt::test_case! {
            $(#[$doc])*
            name = $name3, mode = Long64, path = Full $(, cpuid_clear = [$(($leaf, $sub, $reg, $mask)),+])?;
            fn $case3() {
                $pre();
                let e = hvprobe_rt::user::call_at_cpl3($fn3, hvprobe_rt::paging::scratch_page());
                hvprobe_rt::check!(e.is_some(), "{} raised no exception at CPL3", $what);
                hvprobe_rt::check_exception!(e, hvprobe_rt::exception::UD, None);
            }
        }
    )+};
}
