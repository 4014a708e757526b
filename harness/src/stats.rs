//! KVM binary statistics (KVM_GET_STATS_FD, KVM API 4.133): per-vCPU counters read before
//! and after a run, so a result shows how the hypervisor handled it.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_MASK};

use crate::Error;

/// _IO(KVMIO, 0xce)
const KVM_GET_STATS_FD: libc::c_ulong = 0xaece;
const HEADER_SIZE: usize = 24;
const DESC_FIXED: usize = 16;

/// One counter's change over a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatDelta {
    pub name: String,
    pub delta: u64,
}

struct Desc {
    name: String,
    cumulative: bool,
    offset: u64,
}

pub struct Stats {
    file: File,
    layout: std::sync::Arc<Layout>,
}

/// What the descriptors say, the same for every vCPU of one kernel: read once per process
/// and kept while the header matches, so that a VM's boot does not parse the table again.
struct Layout {
    header: [u8; HEADER_SIZE],
    descs: Vec<Desc>,
    data_offset: u64,
    /// Bytes of the data block that cover every descriptor kept.
    data_len: usize,
}

static LAYOUT: std::sync::Mutex<Option<std::sync::Arc<Layout>>> = std::sync::Mutex::new(None);

impl Stats {
    /// Opens the statistics of the vCPU (or VM) behind `fd`.
    pub fn open(fd: &impl AsRawFd) -> Result<Stats, Error> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
        let raw = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD) };
        if raw < 0 {
            return Err(Error::Stats(format!("KVM_GET_STATS_FD: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        let mut header = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut header, 0).map_err(|e| Error::Stats(format!("header: {e}")))?;
        let mut cached = LAYOUT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(layout) = cached.as_ref().filter(|l| l.header == header) {
            return Ok(Stats { file, layout: std::sync::Arc::clone(layout) });
        }
        let word = |i: usize| u32::from_le_bytes(header[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        let (name_size, num_desc, desc_offset, data_offset) = (word(1), word(2), word(4), word(5));
        if name_size == 0 || name_size > 256 || num_desc > 4096 {
            return Err(Error::Stats(format!("implausible header: name size {name_size}, {num_desc} descriptors")));
        }
        let desc_size = DESC_FIXED + name_size as usize;
        let mut table = vec![0u8; desc_size * num_desc as usize];
        file.read_exact_at(&mut table, desc_offset.into()).map_err(|e| Error::Stats(format!("descriptors: {e}")))?;
        let descs: Vec<Desc> = table
            .chunks_exact(desc_size)
            .filter_map(|d| {
                let flags = u32::from_le_bytes(d[0..4].try_into().ok()?);
                let size = u16::from_le_bytes(d[6..8].try_into().ok()?);
                let offset = u32::from_le_bytes(d[8..12].try_into().ok()?);
                let name = &d[DESC_FIXED..];
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                // Histograms (size > 1) are left out: a scalar delta is what a result shows.
                (size == 1).then(|| Desc {
                    name: String::from_utf8_lossy(&name[..end]).into_owned(),
                    cumulative: flags & KVM_STATS_TYPE_MASK == KVM_STATS_TYPE_CUMULATIVE,
                    offset: offset.into(),
                })
            })
            .collect();
        let data_len = descs.iter().map(|d| d.offset as usize + 8).max().unwrap_or(0);
        if data_len > 1 << 20 {
            return Err(Error::Stats(format!("implausible data block of {data_len} bytes")));
        }
        let layout = std::sync::Arc::new(Layout { header, descs, data_offset: data_offset.into(), data_len });
        *cached = Some(std::sync::Arc::clone(&layout));
        Ok(Stats { file, layout })
    }

    /// Current values, in descriptor order: one read of the data block per call, since
    /// it runs before and after every case.
    pub fn read(&self) -> Result<Vec<u64>, Error> {
        let l = &self.layout;
        let mut data = vec![0u8; l.data_len];
        self.file.read_exact_at(&mut data, l.data_offset).map_err(|e| Error::Stats(format!("data: {e}")))?;
        Ok(l.descs
            .iter()
            .map(|d| {
                let at = d.offset as usize;
                u64::from_le_bytes(data[at..at + 8].try_into().expect("data_len covers every descriptor"))
            })
            .collect())
    }

    /// The value of counter `name` in `reading` (from [`Stats::read`]).
    pub fn value(&self, reading: &[u64], name: &str) -> Option<u64> {
        self.layout.descs.iter().zip(reading).find(|(d, _)| d.name == name).map(|(_, v)| *v)
    }

    /// Non-zero changes of cumulative counters between two readings; instantaneous and
    /// peak values are reported as their value after the run.
    pub fn deltas(&self, before: &[u64], after: &[u64]) -> Vec<StatDelta> {
        self.layout
            .descs
            .iter()
            .zip(before.iter().zip(after))
            .map(|(d, (b, a))| StatDelta {
                name: d.name.clone(),
                delta: if d.cumulative { a.wrapping_sub(*b) } else { *a },
            })
            .filter(|s| s.delta != 0)
            .collect()
    }
}
