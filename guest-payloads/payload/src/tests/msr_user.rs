//! MSRs served by the VMM: KVM_CAP_X86_USER_SPACE_MSR turns accesses to MSRs KVM does
//! not know, and to MSRs a KVM_X86_SET_MSR_FILTER filter denies, into KVM_EXIT_X86_RDMSR
//! and KVM_EXIT_X86_WRMSR exits (api.rst 7.21, 4.126, 5 "KVM_EXIT_X86_RDMSR"). The host
//! answers as `hvprobe_abi::user_msr` says; the guest checks it got exactly that, that a
//! refused access is #GP(0), and that a filtered write never reaches KVM's register.

use hvprobe_rt::abi::proto::service;
use hvprobe_rt::abi::requires::USER_MSR;
use hvprobe_rt::abi::user_msr::{FILTERED, FILTERED_VALUE, REFUSED, UNKNOWN, UNKNOWN_VALUE, WRITE_FILTERED};
use hvprobe_rt::exception;
use hvprobe_rt::proto::service as request;
use hvprobe_rt::{check, check_eq, check_exception, test_case};

use super::cpu::{try_rdmsr, try_wrmsr};

/// KVM_MSR_EXIT_REASON_UNKNOWN and _FILTER (include/uapi/linux/kvm.h).
const REASON_UNKNOWN: u64 = 1 << 1;
const REASON_FILTER: u64 = 1 << 2;

fn last(what: u64) -> Option<u64> {
    request(service::USER_MSR_LAST, [what, 0, 0, 0]).ok()
}

fn rdmsr(msr: u32) -> Result<u64, u8> {
    try_rdmsr(msr).map_err(|e| e.vector)
}

test_case! {
    /// RDMSR of an MSR KVM does not know exits to userspace, and the value the VMM puts
    /// in the exit is what the guest reads.
    name = "cpu::msr_user_unknown_read::long64", mode = Long64, path = Full, requires = USER_MSR;
    fn msr_user_unknown_read() {
        check_eq!(rdmsr(UNKNOWN), Ok(UNKNOWN_VALUE), "RDMSR of the unknown MSR the VMM serves");
        check_eq!(last(3), Some(1), "MSR exits to userspace");
    }
}

test_case! {
    /// WRMSR of an MSR KVM does not know exits to userspace with the index, the value and
    /// reason UNKNOWN, and completes in the guest when the VMM accepts it.
    name = "cpu::msr_user_unknown_write::long64", mode = Long64, path = Full, requires = USER_MSR;
    fn msr_user_unknown_write() {
        let value = 0xfeed_0000_0000_0001u64;
        let e = try_wrmsr(UNKNOWN, value);
        check!(e.is_none(), "WRMSR the VMM accepted raised {:?}", e.map(|e| e.vector));
        check_eq!(last(0), Some(u64::from(UNKNOWN)), "index of the write exit");
        check_eq!(last(1), Some(value), "value of the write exit");
        check_eq!(last(2), Some(REASON_UNKNOWN), "reason of the write exit");
    }
}

test_case! {
    /// When the VMM sets the exit's error, the guest's RDMSR and WRMSR raise #GP(0)
    /// (api.rst: "error ... inject a #GP").
    name = "cpu::msr_user_refused::long64", mode = Long64, path = Full, requires = USER_MSR;
    fn msr_user_refused() {
        check_eq!(rdmsr(REFUSED), Err(exception::GP), "RDMSR the VMM refused");
        check_exception!(try_wrmsr(REFUSED, 1), exception::GP, Some(0));
        check_eq!(last(3), Some(2), "MSR exits to userspace");
    }
}

test_case! {
    /// An MSR the filter denies for reads exits to userspace (reason FILTER) although KVM
    /// implements it, and the guest reads the VMM's value, not KVM's register.
    name = "cpu::msr_filter_read::long64", mode = Long64, path = Full, requires = USER_MSR;
    fn msr_filter_read() {
        check_eq!(rdmsr(FILTERED), Ok(FILTERED_VALUE), "RDMSR of the filtered MSR");
        check_eq!(last(3), Some(1), "MSR exits to userspace");
    }
}

test_case! {
    /// A WRMSR of an MSR the filter denies exits with reason FILTER, and the value never
    /// reaches KVM's register: a read the filter allows still returns the old value.
    name = "cpu::msr_filter_write::long64", mode = Long64, path = Full, requires = USER_MSR;
    fn msr_filter_write() {
        let before = rdmsr(WRITE_FILTERED);
        check!(before.is_ok(), "RDMSR of the write-filtered MSR raised {:?}", before.err());
        let before = before.unwrap_or(0);
        let value = before ^ 0x1000;
        let e = try_wrmsr(WRITE_FILTERED, value);
        check!(e.is_none(), "the filtered WRMSR the VMM accepted raised {:?}", e.map(|e| e.vector));
        check_eq!(last(0), Some(u64::from(WRITE_FILTERED)), "index of the write exit");
        check_eq!(last(1), Some(value), "value of the write exit");
        check_eq!(last(2), Some(REASON_FILTER), "reason of the write exit");
        check_eq!(rdmsr(WRITE_FILTERED), Ok(before), "the register after the filtered write");
        check_eq!(last(3), Some(1), "MSR exits to userspace (the reads are not filtered)");
    }
}

test_case! {
    /// A filtered MSR exits for writes as well when its range denies both.
    name = "cpu::msr_filter_read_write::long64", mode = Long64, path = Full, requires = USER_MSR;
    fn msr_filter_read_write() {
        check!(try_wrmsr(FILTERED, 0x1234).is_none(), "the filtered WRMSR raised an exception");
        check_eq!(last(2), Some(REASON_FILTER), "reason of the write exit");
        check_eq!(rdmsr(FILTERED), Ok(FILTERED_VALUE), "RDMSR of the filtered MSR");
        check_eq!(last(3), Some(2), "MSR exits to userspace");
    }
}
