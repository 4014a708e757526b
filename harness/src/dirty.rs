//! Dirty logging of guest RAM: KVM_MEM_LOG_DIRTY_PAGES on memory slot 0,
//! KVM_GET_DIRTY_LOG, and KVM_CLEAR_DIRTY_LOG in KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 mode
//! (api.rst 4.8, 4.117 and 7.18).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use hvprobe_abi::proto::{DIRTY_CLEAR, DIRTY_COUNT, DIRTY_START, DIRTY_TEST};
use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_clear_dirty_log, kvm_enable_cap};
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::{ioctl_io_nr, ioctl_iowr_nr};

use crate::{Error, Vm};

pub const PAGE: u64 = 4096;
/// KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2's "enable" bit (api.rst 7.18).
const MANUAL_PROTECT_ENABLE: u64 = 1;

ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, kvm_bindings::KVMIO, 0xc0, kvm_clear_dirty_log);

/// The host's record of dirty pages: what KVM_GET_DIRTY_LOG reported since logging
/// started, less what was cleared.
#[derive(Clone, Debug, Default)]
pub struct DirtyRecord {
    pub logging: bool,
    pub manual: bool,
    pub bitmap: Vec<u64>,
}

impl DirtyRecord {
    fn set(&mut self, page: u64, dirty: bool) {
        if let Some(w) = self.bitmap.get_mut((page / 64) as usize) {
            if dirty {
                *w |= 1 << (page % 64);
            } else {
                *w &= !(1 << (page % 64));
            }
        }
    }

    fn test(&self, page: u64) -> bool {
        self.bitmap.get((page / 64) as usize).is_some_and(|w| w & (1 << (page % 64)) != 0)
    }
}

/// The pages a KVM_GET_DIRTY_LOG bitmap marks.
fn bitmap_pages(bitmap: &[u64]) -> impl Iterator<Item = u64> + '_ {
    bitmap
        .iter()
        .enumerate()
        .flat_map(|(i, w)| (0..64).filter(move |b| w & (1 << b) != 0).map(move |b| (i * 64 + b) as u64))
}

/// The pages of slot 0 (`size` bytes) dirtied since the last collection: from the dirty
/// rings when there are any, else from KVM_GET_DIRTY_LOG on `vm`.
pub(crate) fn collect(rings: &mut [DirtyRing], vm: &VmFd, size: usize) -> Result<Vec<u64>, Error> {
    if !rings.is_empty() {
        return harvest(rings, vm);
    }
    let bitmap = vm.get_dirty_log(0, size).map_err(Error::kvm("KVM_GET_DIRTY_LOG"))?;
    Ok(bitmap_pages(&bitmap).collect())
}

impl Vm {
    /// Turns dirty logging of guest RAM on (and forgets what is dirty) or off.
    pub fn set_dirty_logging(&mut self, on: bool) -> Result<(), Error> {
        // SAFETY: the same mapping slot 0 already has, which outlives the VM.
        unsafe { self.memory.map_as_slot(&self.vm_fd, 0, 0, if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 }) }?;
        self.dirty.logging = on;
        self.dirty.bitmap = vec![0; self.pages().div_ceil(64) as usize];
        Ok(())
    }

    /// Switches to KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: KVM_GET_DIRTY_LOG no longer clears
    /// the log, KVM_CLEAR_DIRTY_LOG does. Logging is off while the mode changes.
    pub fn enable_manual_dirty_protect(&mut self) -> Result<(), Error> {
        if self.dirty.logging {
            self.set_dirty_logging(false)?;
        }
        let mut cap = kvm_enable_cap { cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, ..Default::default() };
        cap.args[0] = MANUAL_PROTECT_ENABLE;
        self.vm_fd.enable_cap(&cap).map_err(Error::kvm("KVM_ENABLE_CAP(MANUAL_DIRTY_LOG_PROTECT2)"))?;
        self.dirty.manual = true;
        Ok(())
    }

    fn pages(&self) -> u64 {
        self.memory.size() / PAGE
    }

    /// The pages dirtied since the last fetch (see [`collect`]), added to the record.
    pub fn fetch_dirty_log(&mut self) -> Result<Vec<u64>, Error> {
        let pages = collect(&mut self.dirty_rings, &self.vm_fd, self.memory.size() as usize)?;
        self.record_dirty(&pages);
        Ok(pages)
    }

    /// KVM_CLEAR_DIRTY_LOG of pages [first, first + count) of slot 0, and the same in the
    /// record. KVM wants `first` a multiple of 64 and `count` too, unless the range ends at
    /// the end of the slot.
    pub fn clear_dirty_log(&mut self, first: u64, count: u64) -> Result<(), Error> {
        let words = count.div_ceil(64) as usize;
        let mut mask = vec![u64::MAX; words.max(1)];
        if !count.is_multiple_of(64) {
            mask[words - 1] = (1u64 << (count % 64)) - 1;
        }
        let clear = kvm_clear_dirty_log {
            slot: 0,
            num_pages: count as u32,
            first_page: first,
            __bindgen_anon_1: kvm_bindings::kvm_clear_dirty_log__bindgen_ty_1 {
                dirty_bitmap: mask.as_mut_ptr().cast(),
            },
        };
        // SAFETY: `clear` points at `mask`, which holds `count` bits and lives past the
        // call; KVM only reads it.
        let ret = unsafe { ioctl_with_ref(&self.vm_fd, KVM_CLEAR_DIRTY_LOG(), &clear) };
        if ret < 0 {
            return Err(Error::kvm("KVM_CLEAR_DIRTY_LOG")(kvm_ioctls::Error::last()));
        }
        for page in first..first + count {
            self.dirty.set(page, false);
        }
        Ok(())
    }

    /// Adds pages to the record.
    pub(crate) fn record_dirty(&mut self, pages: &[u64]) {
        for p in pages {
            self.dirty.set(*p, true);
        }
    }

    /// The DIRTY_LOG service (see `hvprobe_abi::proto::service::DIRTY_LOG`).
    pub(crate) fn dirty_service(&mut self, args: [u64; 4]) -> crate::services::ServiceResult {
        use crate::services::ServiceError;
        let failed = |op: &'static str| move |e: Error| ServiceError::Host { op, message: e.to_string() };
        let in_ram = |a: u64| a <= self.memory.size();
        match args[0] {
            DIRTY_START => {
                if args[1] == 1 && !self.dirty.manual {
                    self.enable_manual_dirty_protect().map_err(failed("enabling manual dirty-log protection"))?;
                }
                self.set_dirty_logging(true).map_err(failed("turning dirty logging on"))?;
                Ok(0)
            }
            DIRTY_COUNT if self.dirty.logging && in_ram(args[1]) && in_ram(args[2]) => {
                self.fetch_dirty_log().map_err(failed("KVM_GET_DIRTY_LOG"))?;
                Ok((args[1] / PAGE..args[2].div_ceil(PAGE)).filter(|p| self.dirty.test(*p)).count() as u64)
            }
            DIRTY_TEST if self.dirty.logging && args[1] < self.memory.size() => {
                self.fetch_dirty_log().map_err(failed("KVM_GET_DIRTY_LOG"))?;
                Ok(self.dirty.test(args[1] / PAGE) as u64)
            }
            DIRTY_CLEAR if self.dirty.manual && in_ram(args[1]) && in_ram(args[2]) && args[1] <= args[2] => {
                let (first, end) = (args[1] / PAGE, args[2].div_ceil(PAGE));
                self.clear_dirty_log(first, end - first).map_err(failed("KVM_CLEAR_DIRTY_LOG"))?;
                Ok(0)
            }
            op => Err(ServiceError::Argument(format!(
                "DIRTY_LOG {op} with {:#x}..{:#x}: not an operation the log's state and guest RAM allow",
                args[1], args[2]
            ))),
        }
    }
}

/// One vCPU's dirty ring (api.rst 8.29, KVM_CAP_DIRTY_LOG_RING): `kvm_dirty_gfn` entries
/// shared with KVM at page offset KVM_DIRTY_LOG_PAGE_OFFSET of the vCPU fd. KVM sets an
/// entry's DIRTY flag when it logs a page; userspace collects it, sets RESET, and calls
/// KVM_RESET_DIRTY_RINGS to re-protect the pages.
pub struct DirtyRing {
    entries: *mut kvm_bindings::kvm_dirty_gfn,
    count: u32,
    /// The next entry to collect (free-running, taken modulo `count`).
    next: u32,
}

// SAFETY: the mapping belongs to this value; only one thread collects from a ring at a
// time (the owner of the `&mut`), and the flags are accessed atomically.
unsafe impl Send for DirtyRing {}

/// kvm_dirty_gfn flags (include/uapi/linux/kvm.h).
const DIRTY_GFN_F_DIRTY: u32 = 1;
const DIRTY_GFN_F_RESET: u32 = 2;

ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, kvm_bindings::KVMIO, 0xc7);

impl DirtyRing {
    /// Maps vCPU `fd`'s ring of `count` entries.
    pub(crate) fn map(fd: &impl AsRawFd, count: u32) -> Result<DirtyRing, Error> {
        let bytes = count as usize * size_of::<kvm_bindings::kvm_dirty_gfn>();
        let offset = kvm_bindings::KVM_DIRTY_LOG_PAGE_OFFSET as libc::off_t * PAGE as libc::off_t;
        // SAFETY: a shared mapping of the vCPU fd at the offset KVM documents, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Snapshot(format!("cannot map the dirty ring: {}", std::io::Error::last_os_error())));
        }
        Ok(DirtyRing { entries: p.cast(), count, next: 0 })
    }

    /// Collects the entries KVM has published: (slot, page offset in the slot).
    pub(crate) fn collect(&mut self, out: &mut Vec<u64>) {
        loop {
            // SAFETY: the index is reduced modulo the ring's entry count, so it is within
            // the mapping.
            let e = unsafe { self.entries.add((self.next % self.count) as usize) };
            // SAFETY: `flags` is an aligned u32 in the shared mapping, which KVM and we both
            // access atomically (acquire/release, as api.rst 8.29 asks).
            let flags = unsafe { &*(&raw mut (*e).flags).cast::<AtomicU32>() };
            if flags.load(Ordering::Acquire) & DIRTY_GFN_F_DIRTY == 0 {
                return;
            }
            // SAFETY: KVM filled the entry before it set DIRTY (released above).
            let (slot, offset) = unsafe { ((*e).slot, (*e).offset) };
            if slot == 0 {
                out.push(offset);
            }
            flags.store(DIRTY_GFN_F_RESET, Ordering::Release);
            self.next = self.next.wrapping_add(1);
        }
    }
}

impl Drop for DirtyRing {
    fn drop(&mut self) {
        let bytes = self.count as usize * size_of::<kvm_bindings::kvm_dirty_gfn>();
        // SAFETY: unmaps exactly the mapping `map` made.
        unsafe { libc::munmap(self.entries.cast(), bytes) };
    }
}

/// Collects every ring's entries, then has KVM re-protect the collected pages
/// (KVM_RESET_DIRTY_RINGS on the VM fd `vm`). Returns the dirty pages, deduplicated.
pub(crate) fn harvest(rings: &mut [DirtyRing], vm: &impl AsRawFd) -> Result<Vec<u64>, Error> {
    let mut pages = Vec::new();
    for r in rings.iter_mut() {
        r.collect(&mut pages);
    }
    // SAFETY: KVM_RESET_DIRTY_RINGS takes no argument.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl(vm, KVM_RESET_DIRTY_RINGS()) };
    if ret < 0 {
        return Err(Error::kvm("KVM_RESET_DIRTY_RINGS")(kvm_ioctls::Error::last()));
    }
    pages.sort_unstable();
    pages.dedup();
    Ok(pages)
}
