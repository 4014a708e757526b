//! Coalesced MMIO and PIO (api.rst 4.116, KVM_REGISTER_COALESCED_MMIO): writes to a
//! registered zone do not exit; KVM appends them to a ring in a page of the vCPU's
//! mapping, and the VMM applies them, in order, before it handles the next exit.
//!
//! The ring is mapped here rather than through kvm-ioctls's `VcpuFd`, so that the run
//! loop can drain it while it holds the exit that `VcpuFd::run` returned.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{Ordering, fence};

use kvm_bindings::kvm_coalesced_mmio;

use crate::Error;
use crate::devices::Devices;

const PAGE: usize = 4096;
/// Entries the page holds after its `first` and `last` words.
const ENTRIES: u32 = ((PAGE - 8) / size_of::<kvm_coalesced_mmio>()) as u32;

pub(crate) struct CoalescedRing {
    page: NonNull<u8>,
    /// Entries applied since the VM was made.
    pub drained: u64,
}

// SAFETY: the mapping is owned by this value; KVM writes entries and `last`, and only
// `drain` (through `&mut self`) reads them and writes `first`.
unsafe impl Send for CoalescedRing {}

impl CoalescedRing {
    /// Maps the ring page at `page_offset` (KVM_CHECK_EXTENSION(KVM_CAP_COALESCED_MMIO))
    /// of the vCPU's mapping.
    pub fn map(vcpu: &impl AsRawFd, page_offset: usize) -> Result<CoalescedRing, Error> {
        // SAFETY: a shared mapping of one page of the vCPU fd at the offset KVM names;
        // the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                (page_offset * PAGE) as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::kvm("mmap of the coalesced MMIO ring")(kvm_ioctls::Error::last()));
        }
        let page = NonNull::new(ptr.cast()).expect("mmap never returns NULL on success");
        Ok(CoalescedRing { page, drained: 0 })
    }

    /// Applies every pending entry to `devices`, oldest first.
    pub fn drain(&mut self, devices: &mut Devices) {
        let base = self.page.as_ptr();
        // SAFETY: `first` and `last` are the page's first two u32 words; KVM updates
        // `last`, so both are read volatile.
        let (first_at, last_at) = unsafe { (base as *mut u32, (base as *const u32).add(1)) };
        loop {
            // SAFETY: as above.
            let (first, last) = unsafe { (first_at.read_volatile(), last_at.read_volatile()) };
            if first == last || first >= ENTRIES {
                return;
            }
            fence(Ordering::Acquire);
            // SAFETY: entry `first` (< ENTRIES) lies inside the page.
            let e = unsafe { (base.add(8) as *const kvm_coalesced_mmio).add(first as usize).read_volatile() };
            let len = (e.len as usize).min(e.data.len());
            // SAFETY: `pio` is the union's meaning since KVM_CAP_COALESCED_PIO; 0 for MMIO.
            if unsafe { e.__bindgen_anon_1.pio } != 0 {
                devices.port_write(e.phys_addr as u16, &e.data[..len]);
            } else {
                devices.mmio_write(e.phys_addr, &e.data[..len]);
            }
            fence(Ordering::Release);
            // SAFETY: as above; KVM reads `first` to know the entry is free again.
            unsafe { first_at.write_volatile((first + 1) % ENTRIES) };
            self.drained += 1;
        }
    }
}

impl Drop for CoalescedRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the page `map` mapped.
        unsafe { libc::munmap(self.page.as_ptr().cast(), PAGE) };
    }
}
