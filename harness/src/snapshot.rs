//! Whole-VM snapshots: every vCPU's state, guest memory, the in-kernel irqchip and the KVM
//! clock; restored into a fresh VM in this process, or written to a versioned file and
//! restored in another (the move to another server).
//!
//! The file holds KVM's own structures, so it belongs to the harness, the only crate that
//! knows them: a first line of JSON (the format name, the case, the state; kvm-bindings
//! serialises its structures), then guest memory, raw.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_clock_data, kvm_irqchip};
use serde::{Deserialize, Serialize};

use crate::{Error, Kvm, Payload, TestCase, VcpuState, Vm, VmConfig};

/// The format name in the first line of a snapshot file.
pub const FORMAT: &str = "hvprobe.snapshot/1";

/// KVM_GET_IRQCHIP chip ids: master PIC, slave PIC, IOAPIC (api.rst, 4.26).
const CHIPS: [u32; 3] = [0, 1, 2];

/// A stopped VM, whole.
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub format: String,
    /// The case the VM was booted for: a restore boots the same case's machine first.
    pub case: String,
    pub vcpus: Vec<VcpuState>,
    /// PIC master, PIC slave, IOAPIC, when the VM has the in-kernel irqchip.
    pub irqchip: Vec<kvm_irqchip>,
    /// KVM_GET_CLOCK (kvmclock's base).
    pub clock: Option<kvm_clock_data>,
    /// The userspace test devices' registers (the port device, then the MMIO device).
    pub device_regs: Vec<u8>,
    /// Guest RAM from guest-physical 0 (written raw after the JSON line).
    #[serde(skip)]
    pub memory: Vec<u8>,
}

/// How long the parts of a save or restore took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timing {
    pub vcpus: Duration,
    pub memory: Duration,
    pub devices: Duration,
}

impl Vm {
    /// Finishes an I/O or MMIO exit the run loop has answered but KVM has not yet
    /// completed, without running a guest instruction: KVM_RUN with immediate_exit set.
    /// api.rst (KVM_RUN, "the corresponding operations are complete (and guest state is
    /// consistent) only after userspace has re-entered the kernel with KVM_RUN") requires
    /// this before the state is saved; otherwise a restored guest repeats its last OUT.
    pub fn complete_pending_io(&mut self) -> Result<(), Error> {
        for vcpu in &mut self.vcpus {
            vcpu.set_kvm_immediate_exit(1);
            let r = vcpu.run().map(|_| ());
            vcpu.set_kvm_immediate_exit(0);
            match r {
                Err(e) if e.errno() == libc::EINTR => {}
                Err(e) => return Err(Error::kvm("KVM_RUN (immediate_exit)")(e)),
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Saves the whole VM. The vCPUs must be stopped (no `run` in progress).
    pub fn save(&mut self, case: &str) -> Result<(Snapshot, Timing), Error> {
        let (mut snap, mut t) = self.save_state(case)?;
        let start = Instant::now();
        snap.memory = self.memory.read_vec(0, self.memory.size())?;
        t.memory = start.elapsed();
        Ok((snap, t))
    }

    /// Saves everything but memory: vCPUs, irqchip, clock, devices.
    pub fn save_state(&mut self, case: &str) -> Result<(Snapshot, Timing), Error> {
        let mut t = Timing::default();
        let start = Instant::now();
        self.complete_pending_io()?;
        let vcpus = (0..self.vcpus.len()).map(|i| self.save_vcpu(i)).collect::<Result<Vec<_>, _>>()?;
        t.vcpus = start.elapsed();
        let start = Instant::now();
        let mut irqchip = Vec::new();
        if self.irqchip {
            for chip_id in CHIPS {
                let mut chip = kvm_irqchip { chip_id, ..Default::default() };
                self.vm_fd.get_irqchip(&mut chip).map_err(Error::kvm("KVM_GET_IRQCHIP"))?;
                irqchip.push(chip);
            }
        }
        let clock = self.vm_fd.get_clock().ok();
        let device_regs = [&self.devices.port_regs[..], &self.devices.mmio_regs[..]].concat();
        t.devices = start.elapsed();
        let snap = Snapshot {
            format: FORMAT.into(),
            case: case.into(),
            vcpus,
            irqchip,
            clock,
            device_regs,
            memory: Vec::new(),
        };
        Ok((snap, t))
    }

    /// Boots `case` in a fresh VM and puts `snap` into it: memory, irqchip, clock, and
    /// every vCPU's state. The VM continues where the snapshot was taken at its next `run`.
    pub fn restore(
        kvm: &Kvm,
        payload: &Payload,
        case: &TestCase,
        config: VmConfig,
        snap: &Snapshot,
    ) -> Result<(Vm, Timing), Error> {
        if snap.case != case.name {
            return Err(Error::Snapshot(format!("the snapshot is of {}, not of {}", snap.case, case.name)));
        }
        let mut vm = Vm::boot(kvm, payload, case, config)?;
        if snap.vcpus.len() != vm.vcpus.len()
            || (!snap.memory.is_empty() && snap.memory.len() as u64 != vm.memory.size())
        {
            return Err(Error::Snapshot(format!(
                "the snapshot has {} vCPUs and {} bytes of memory; the VM has {} and {}",
                snap.vcpus.len(),
                snap.memory.len(),
                vm.vcpus.len(),
                vm.memory.size()
            )));
        }
        let t = vm.apply(snap)?;
        Ok((vm, t))
    }

    /// Puts `snap` into this VM: memory (unless the snapshot has none, when the caller
    /// has copied it already), irqchip, clock, devices and every vCPU's state.
    pub fn apply(&mut self, snap: &Snapshot) -> Result<Timing, Error> {
        let mut t = Timing::default();
        let start = Instant::now();
        if !snap.memory.is_empty() {
            self.memory.write(0, &snap.memory)?;
        }
        t.memory = start.elapsed();
        let start = Instant::now();
        for chip in &snap.irqchip {
            self.vm_fd.set_irqchip(chip).map_err(Error::kvm("KVM_SET_IRQCHIP"))?;
        }
        if let Some(clock) = &snap.clock {
            // Only the clock value is restored: the flags KVM_GET_CLOCK reports
            // (KVM_CLOCK_TSC_STABLE, ...) are not inputs of KVM_SET_CLOCK.
            let clock = kvm_clock_data { clock: clock.clock, ..Default::default() };
            self.vm_fd.set_clock(&clock).map_err(Error::kvm("KVM_SET_CLOCK"))?;
        }
        let (ports, mmio) = snap.device_regs.split_at(snap.device_regs.len().min(self.devices.port_regs.len()));
        if ports.len() == self.devices.port_regs.len() && mmio.len() == self.devices.mmio_regs.len() {
            self.devices.port_regs.copy_from_slice(ports);
            self.devices.mmio_regs.copy_from_slice(mmio);
        } else {
            return Err(Error::Snapshot(format!("device registers are {} bytes", snap.device_regs.len())));
        }
        t.devices = start.elapsed();
        let start = Instant::now();
        for (i, state) in snap.vcpus.iter().enumerate() {
            self.restore_vcpu(i, state)?;
        }
        t.vcpus = start.elapsed();
        Ok(t)
    }
}

impl Snapshot {
    /// Writes the snapshot atomically: a temporary file beside `path`, synced, renamed.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let io = |e: std::io::Error| Error::Snapshot(format!("cannot write {}: {e}", path.display()));
        let header = serde_json::to_string(self).map_err(|e| Error::Snapshot(format!("cannot encode: {e}")))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("snapshot"),
            std::process::id()
        ));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        f.write_all(header.as_bytes()).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.write_all(&self.memory).map_err(io)?;
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a snapshot file, checking its format name and that its memory is whole.
    pub fn read(path: &Path) -> Result<Snapshot, Error> {
        let f =
            std::fs::File::open(path).map_err(|e| Error::Snapshot(format!("{}: cannot open: {e}", path.display())))?;
        Self::from_reader(std::io::BufReader::new(f), &path.display().to_string())
    }

    /// Reads a snapshot from `r`, naming it `name` in errors (see [`Snapshot::read`]).
    pub fn from_reader(mut r: impl std::io::BufRead, name: &str) -> Result<Snapshot, Error> {
        let bad = |what: String| Error::Snapshot(format!("{name}: {what}"));
        // Bounded reads: a header line of at most MAX_HEADER bytes, then exactly the
        // guest's RAM, so that a huge or endless file (/dev/zero) is an error, not an OOM.
        const MAX_HEADER: u64 = 16 << 20;
        let mut header = String::new();
        (&mut r).take(MAX_HEADER).read_line(&mut header).map_err(|e| bad(format!("cannot read: {e}")))?;
        if !header.ends_with('\n') {
            return Err(bad(format!("no header line within {MAX_HEADER} bytes: not a snapshot file")));
        }
        let probe: serde_json::Value =
            serde_json::from_str(&header).map_err(|e| bad(format!("not a snapshot file: {e}")))?;
        if probe.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(format!("format is {}, expected {FORMAT}", probe.get("format").unwrap_or(&"none".into()))));
        }
        let mut snap: Snapshot = serde_json::from_value(probe).map_err(|e| bad(format!("malformed state: {e}")))?;
        r.take(hvprobe_abi::layout::RAM_SIZE + 1)
            .read_to_end(&mut snap.memory)
            .map_err(|e| bad(format!("cannot read memory: {e}")))?;
        if snap.memory.len() as u64 != hvprobe_abi::layout::RAM_SIZE {
            return Err(bad(format!(
                "memory is {} bytes, expected {} (a truncated file?)",
                snap.memory.len(),
                hvprobe_abi::layout::RAM_SIZE
            )));
        }
        Ok(snap)
    }
}
