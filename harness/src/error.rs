use std::path::PathBuf;

/// Errors of the harness itself: KVM refused something, or the host lacks something.
/// A guest misbehaving is never an `Error`; it is a [`crate::RunEnd`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path}: {source}")]
    OpenKvm { path: PathBuf, source: std::io::Error },
    #[error("KVM API version is {0}, hvprobe needs 12")]
    KvmApiVersion(i32),
    #[error("{op} failed: {source}")]
    Kvm { op: &'static str, source: kvm_ioctls::Error },
    #[error("cannot map {size} bytes of guest memory: {source}")]
    GuestMemory { size: u64, source: std::io::Error },
    #[error("guest memory access at {addr:#x}+{len:#x} is outside guest RAM")]
    OutOfBounds { addr: u64, len: u64 },
    #[error("cannot build the CPUID table: {0}")]
    Cpuid(String),
    #[error("cannot read KVM statistics: {0}")]
    Stats(String),
    #[error("cannot create an eventfd: {0}")]
    EventFd(String),
    /// A floor measurement (`floor.rs`) went wrong.
    #[error("{0}")]
    Floor(String),
    #[error("no vCPU {0}")]
    NoVcpu(usize),
    /// Saving or restoring a vCPU's state went wrong beyond a failed ioctl.
    #[error("vCPU state: {0}")]
    VcpuState(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("cannot pin the vCPU thread to CPU {cpu}: {source}")]
    Affinity { cpu: usize, source: std::io::Error },
    #[error("cannot start the watchdog: {0}")]
    Watchdog(String),
}

impl Error {
    pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { op, source }
    }
}
