//! Where a model's weights live while it runs.
//!
//! Decoding reads every weight once per token, so the cost of translating its addresses
//! counts: a file mapping is backed by 4 KiB pages (this kernel's page cache does not give
//! read-only file mappings huge pages), a new TLB entry every 4 KiB, and the hardware
//! prefetchers stop at each page boundary. Copying the file into anonymous memory advised for
//! transparent huge pages costs a read at load (a few tenths of a second per GB from the page
//! cache) and makes decoding 5-7% faster on this machine kind (BENCHMARKS.md), so that is what
//! [`load`] does where the kernel offers huge pages; elsewhere it maps the file.

use std::path::Path;
use std::sync::Arc;

use crate::InferError;

/// Bytes that outlive every view of them: a model file's contents, or an aligned buffer.
pub trait Storage: Send + Sync {
    fn bytes(&self) -> &[u8];
    /// How the bytes are held (for logs and reports).
    fn residence(&self) -> Residence {
        Residence::Heap
    }
    /// Gives the memory of the whole pages inside `start..start + len` back to the system
    /// (weights regrouped at load no longer need their file bytes); where it cannot, nothing.
    ///
    /// # Safety
    /// No view reads those bytes again: memory read in from the file would read as zeros.
    unsafe fn release(&self, _start: usize, _len: usize) {}
}

/// How a model's weights are held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residence {
    /// Read into anonymous memory advised for transparent huge pages.
    HugePages,
    /// The file mapped read-only (4 KiB pages shared with the page cache).
    Mapped,
    /// An ordinary heap buffer (tests, converted weights).
    Heap,
}

impl std::fmt::Display for Residence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::HugePages => "huge-pages",
            Self::Mapped => "mapped",
            Self::Heap => "heap",
        })
    }
}

struct Held {
    map: memmap2::Mmap,
    residence: Residence,
}

impl Storage for Held {
    fn bytes(&self) -> &[u8] {
        &self.map
    }
    fn residence(&self) -> Residence {
        self.residence
    }
    unsafe fn release(&self, start: usize, len: usize) {
        // Whole pages only: madvise rounds the start down, onto a neighbour's bytes.
        const PAGE: usize = 4096;
        let (from, to) = (start.next_multiple_of(PAGE), (start + len) / PAGE * PAGE);
        if to > from {
            // SAFETY: the caller promises nothing reads the range again; advice that fails
            // leaves the memory as it was.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
            };
        }
    }
}

/// `len` bytes of anonymous memory advised for huge pages (where the kernel offers them),
/// written by `fill` and then made read-only: weights regrouped at load live there as the
/// file's own would.
pub fn anonymous(len: usize, fill: impl FnOnce(&mut [u8])) -> Result<Arc<dyn Storage>, InferError> {
    let mut memory = memmap2::MmapMut::map_anon(len.max(1))
        .map_err(|e| InferError::Io(format!("allocating {len} bytes for weights: {e}")))?;
    #[cfg(target_os = "linux")]
    let _ = memory.advise(memmap2::Advice::HugePage);
    fill(&mut memory[..len]);
    let map = memory
        .make_read_only()
        .map_err(|e| InferError::Io(format!("protecting regrouped weights: {e}")))?;
    Ok(Arc::new(Held {
        map,
        residence: Residence::HugePages,
    }))
}

/// Whether the kernel gives huge pages to memory that asks for them (`always` or `madvise`
/// in `/sys/kernel/mm/transparent_hugepage/enabled`).
pub fn huge_pages_offered() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"))
}

/// A model file's bytes: with `huge`, read into huge pages where the kernel offers them
/// (decoding reads every weight per token, and the page cache's 4 KiB pages cost a TLB miss
/// each); otherwise mapped from the file (it shares the page cache between processes and loads
/// faster, at a slower decoding speed).
pub fn load(path: &Path, huge: bool) -> Result<Arc<dyn Storage>, InferError> {
    let io =
        |what: &str, e: std::io::Error| InferError::Io(format!("{what} {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| io("opening", e))?;
    let held = if !huge || !huge_pages_offered() {
        // SAFETY: the file is opened read-only and joule never writes model files while they
        // are in use (a fetch writes a temporary file and renames it into place).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("mapping", e))?;
        Held {
            map,
            residence: Residence::Mapped,
        }
    } else {
        let len = file.metadata().map_err(|e| io("reading", e))?.len();
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| {
                InferError::Format(format!("{} is empty or too large", path.display()))
            })?;
        let mut memory =
            memmap2::MmapMut::map_anon(len).map_err(|e| io("allocating memory for", e))?;
        // Advice only: without it the pages are ordinary ones and everything still works.
        #[cfg(target_os = "linux")]
        let _ = memory.advise(memmap2::Advice::HugePage);
        read_in_parallel(&file, &mut memory).map_err(|e| io("reading", e))?;
        Held {
            map: memory.make_read_only().map_err(|e| io("protecting", e))?,
            residence: Residence::HugePages,
        }
    };
    Ok(Arc::new(held))
}

/// Fills `memory` from the start of `file`, a slice per core: most of the load is faulting in
/// and zeroing the fresh pages and copying from the page cache, which the cores share out.
fn read_in_parallel(file: &std::fs::File, memory: &mut [u8]) -> std::io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Whole 2 MiB pages per thread, so no huge page is faulted in by two at once.
    let slice = memory.len().div_ceil(threads).next_multiple_of(2 << 20);
    std::thread::scope(|scope| {
        let parts: Vec<_> = memory
            .chunks_mut(slice)
            .enumerate()
            .map(|(i, part)| scope.spawn(move || read_at(file, part, (i * slice) as u64)))
            .collect();
        parts.into_iter().try_for_each(|p| {
            p.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("a reader panicked")))
        })
    })
}

#[cfg(unix)]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file.try_clone()?;
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Owned bytes aligned for any block type (tests, and weights converted at load).
pub struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` has at least `bytes.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast(), bytes.len())
        };
        Self {
            words,
            len: bytes.len(),
        }
    }
}

impl Storage for Aligned {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the words hold `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }
}
