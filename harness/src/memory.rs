use std::ptr::NonNull;

use crate::Error;

/// Host memory backing guest RAM from guest-physical address 0: anonymous, or a private
/// copy-on-write mapping of a prepared [`Image`].
///
/// Every access copies and is bounds-checked: guest-supplied addresses and lengths are
/// never trusted. The vCPUs (and KVM) change this memory while the host reads it (a
/// message the guest is still writing, pre-copy during live migration), so every copy is
/// a volatile one through `vm_memory::VolatileSlice`, the rust-vmm type made for memory
/// shared with a running guest: plain `copy_nonoverlapping` on memory another agent
/// writes would be a data race in Rust's model. The mapping itself (a private,
/// copy-on-write view of a prepared memfd image) stays this type's own, since vm-memory's
/// regions offer no such image.
pub struct GuestMemory {
    ptr: NonNull<u8>,
    size: u64,
}

// SAFETY: the mapping is owned by this value and only accessed through copying methods
// that take `&self`/`&mut self`; the raw pointer is not shared except with KVM.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; concurrent copies race only with the guest, as they would on hardware.
unsafe impl Sync for GuestMemory {}

/// A prepared RAM image in a memfd: each VM maps it copy-on-write
/// ([`GuestMemory::from_image`]) instead of writing the same bytes again, so a VM starts
/// with the image without copying it and pays only for the pages it writes.
#[derive(Debug)]
pub struct Image {
    fd: std::os::fd::OwnedFd,
    size: u64,
}

impl Image {
    /// An image of `size` bytes, filled by `fill` through an ordinary GuestMemory view.
    pub fn build(size: u64, fill: impl FnOnce(&GuestMemory) -> Result<(), Error>) -> Result<Image, Error> {
        use std::os::fd::FromRawFd;
        let io = |source| Error::GuestMemory { size, source };
        // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
        let raw = unsafe { libc::memfd_create(c"hvprobe-image".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let file = std::fs::File::from(fd);
        file.set_len(size).map_err(io)?;
        let fd = std::os::fd::OwnedFd::from(file);
        // The image is written once through a shared mapping of the memfd.
        let writer = GuestMemory::map(size, libc::MAP_SHARED, Some(&fd))?;
        fill(&writer)?;
        drop(writer);
        Ok(Image { fd, size })
    }
}

impl GuestMemory {
    /// Guest RAM that starts as a copy of `image` (a private, copy-on-write mapping of it).
    pub fn from_image(image: &Image) -> Result<GuestMemory, Error> {
        GuestMemory::map(image.size, libc::MAP_PRIVATE, Some(&image.fd))
    }

    fn map(size: u64, flags: libc::c_int, fd: Option<&std::os::fd::OwnedFd>) -> Result<GuestMemory, Error> {
        use std::os::fd::AsRawFd;
        let (flags, raw) = match fd {
            Some(fd) => (flags, fd.as_raw_fd()),
            None => (flags | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1),
        };
        // SAFETY: a new mapping with no address hint, of an fd we hold (or anonymous); the
        // result is checked.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), size as usize, libc::PROT_READ | libc::PROT_WRITE, flags, raw, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::GuestMemory { size, source: std::io::Error::last_os_error() });
        }
        let ptr = NonNull::new(ptr.cast()).expect("mmap never returns NULL on success");
        Ok(GuestMemory { ptr, size })
    }

    pub fn new(size: u64) -> Result<GuestMemory, Error> {
        GuestMemory::map(size, libc::MAP_PRIVATE, None)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The host address of guest-physical 0, for KVM_SET_USER_MEMORY_REGION.
    fn host_addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// A non-owning view for a thread that reads this memory while another thread holds
    /// the VM mutably (the pre-copy of a live migration).
    pub(crate) fn raw_view(&self) -> RawView {
        RawView { ptr: self.ptr.as_ptr(), size: self.size }
    }

    /// Maps (or remaps, to change `flags`) this memory at `guest_phys_addr` as memory
    /// slot `slot` of `vm` (KVM_SET_USER_MEMORY_REGION).
    ///
    /// # Safety
    /// The memory must outlive the VM (declare it after the VM fd in the owning struct,
    /// so that it drops later).
    pub(crate) unsafe fn map_as_slot(
        &self,
        vm: &kvm_ioctls::VmFd,
        slot: u32,
        guest_phys_addr: u64,
        flags: u32,
    ) -> Result<(), Error> {
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr,
            memory_size: self.size,
            userspace_addr: self.host_addr(),
        };
        // SAFETY: the region is this mapping, which the caller keeps alive past the VM.
        unsafe { vm.set_user_memory_region(region) }.map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))
    }

    /// Deletes memory slot `slot` of `vm` (KVM_SET_USER_MEMORY_REGION with size 0).
    pub(crate) fn unmap_slot(vm: &kvm_ioctls::VmFd, slot: u32) -> Result<(), Error> {
        let region = kvm_bindings::kvm_userspace_memory_region { slot, ..Default::default() };
        // SAFETY: deleting a slot maps nothing.
        unsafe { vm.set_user_memory_region(region) }.map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION (delete)"))
    }

    fn check(&self, addr: u64, len: u64) -> Result<usize, Error> {
        match addr.checked_add(len) {
            Some(end) if end <= self.size => Ok(addr as usize),
            _ => Err(Error::OutOfBounds { addr, len }),
        }
    }

    /// Copies `buf.len()` bytes from guest-physical `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        let offset = self.check(addr, buf.len() as u64)?;
        // SAFETY: `check` proved [offset, offset + len) lies inside the mapping, which
        // lives as long as `self`; every access to it from this process is volatile.
        unsafe { volatile(self.ptr.as_ptr().add(offset), buf.len()) }.copy_to(buf);
        Ok(())
    }

    /// Reads `len` bytes into a new vector (callers bound `len`).
    pub fn read_vec(&self, addr: u64, len: u64) -> Result<Vec<u8>, Error> {
        self.check(addr, len)?;
        let mut v = vec![0; len as usize];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    /// Copies `data` to guest-physical `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), Error> {
        let offset = self.check(addr, data.len() as u64)?;
        // SAFETY: as in `read`, for the destination.
        unsafe { volatile(self.ptr.as_ptr().add(offset), data.len()) }.copy_from(data);
        Ok(())
    }

    pub fn write_u64(&self, addr: u64, value: u64) -> Result<(), Error> {
        self.write(addr, &value.to_le_bytes())
    }

    pub fn write_u32(&self, addr: u64, value: u32) -> Result<(), Error> {
        self.write(addr, &value.to_le_bytes())
    }
}

/// `len` bytes of guest RAM at `at`, for one volatile copy.
///
/// # Safety
/// `[at, at + len)` lies inside a live mapping of guest RAM, which this process only ever
/// accesses through such slices (the guest's own accesses are the other side of the race
/// volatile copies are for).
unsafe fn volatile<'a>(at: *mut u8, len: usize) -> vm_memory::VolatileSlice<'a> {
    // SAFETY: the caller's guarantee.
    unsafe { vm_memory::VolatileSlice::new(at, len) }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` created; the VM using it is gone first
        // (Vm declares its KVM fds before its memory, so they drop earlier).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.size as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_are_bounds_checked() {
        let m = GuestMemory::new(0x2000).unwrap();
        m.write_u64(0x1ff8, 42).unwrap();
        assert_eq!(m.read_vec(0x1ff8, 8).unwrap(), 42u64.to_le_bytes());
        assert!(matches!(m.write_u64(0x1ffc, 1), Err(Error::OutOfBounds { .. })));
        assert!(m.read_vec(u64::MAX - 1, 4).is_err());
        assert!(m.read_vec(0, 0x2001).is_err());
    }
}

/// See [`GuestMemory::raw_view`].
#[derive(Clone, Copy)]
pub(crate) struct RawView {
    ptr: *mut u8,
    size: u64,
}

// SAFETY: a view only copies into and out of the mapping, like `GuestMemory`'s own `&self`
// methods.
unsafe impl Send for RawView {}
// SAFETY: as above.
unsafe impl Sync for RawView {}

impl RawView {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies `buf.len()` bytes from guest-physical `addr`.
    ///
    /// # Safety
    /// The `GuestMemory` the view came from must still be mapped.
    pub unsafe fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Error> {
        match addr.checked_add(buf.len() as u64) {
            Some(end) if end <= self.size => {
                // SAFETY: in bounds (just checked), and the caller keeps the mapping alive.
                unsafe { volatile(self.ptr.add(addr as usize), buf.len()) }.copy_to(buf);
                Ok(())
            }
            _ => Err(Error::OutOfBounds { addr, len: buf.len() as u64 }),
        }
    }

    /// Copies `data` to guest-physical `addr`.
    ///
    /// # Safety
    /// The `GuestMemory` the view came from must still be mapped.
    pub unsafe fn write(&self, addr: u64, data: &[u8]) -> Result<(), Error> {
        match addr.checked_add(data.len() as u64) {
            Some(end) if end <= self.size => {
                // SAFETY: in bounds (just checked), and the caller keeps the mapping alive.
                unsafe { volatile(self.ptr.add(addr as usize), data.len()) }.copy_from(data);
                Ok(())
            }
            _ => Err(Error::OutOfBounds { addr, len: data.len() as u64 }),
        }
    }
}
