//! Model files load byte for byte either way, and the huge-page copy really is in huge pages
//! where the kernel offers them (read back from `/proc/self/smaps`).

use joule_infer::quant::{Residence, huge_pages_offered, load};

/// A file of 12 MiB of varied bytes: room for several 2 MiB pages.
fn model_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.gguf");
    let bytes: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    (dir, path, bytes)
}

/// `AnonHugePages` of the mapping that holds `addr`, in kB.
fn anon_huge_kb(addr: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = (a..b).contains(&addr);
        } else if inside && let Some(v) = line.strip_prefix("AnonHugePages:") {
            return v.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    None
}

#[test]
fn weights_load_byte_for_byte_mapped_or_in_huge_pages() {
    let (_dir, path, bytes) = model_file();
    let mapped = load(&path, false).unwrap();
    assert_eq!(mapped.residence(), Residence::Mapped);
    assert!(mapped.bytes() == bytes.as_slice());

    let held = load(&path, true).unwrap();
    assert!(held.bytes() == bytes.as_slice());
    if !huge_pages_offered() {
        assert_eq!(held.residence(), Residence::Mapped);
        return;
    }
    assert_eq!(held.residence(), Residence::HugePages);
    // Huge pages are advice. Where the kernel compacts memory for advised regions at fault
    // time (`defrag` of `always` or `madvise`, as on this project's machines) it may grant
    // fewer than asked, but not none of 12 MiB; elsewhere a fragmented machine may grant none.
    let compacts = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/defrag")
        .is_ok_and(|s| s.contains("[always]") || s.contains("[madvise]"));
    if cfg!(target_os = "linux") && compacts {
        let kb = anon_huge_kb(held.bytes().as_ptr() as usize + (6 << 20))
            .expect("the weights' mapping is in /proc/self/smaps");
        assert!(kb >= 2048, "{kb} kB of the 12 MiB copy in huge pages");
    }
}

#[test]
fn a_missing_model_file_is_an_error_naming_it() {
    let err = load(std::path::Path::new("/nonexistent/model.gguf"), true)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
}
