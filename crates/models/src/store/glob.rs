//! The one pattern the catalog needs for wheel members: `*` for any run of characters within a
//! path segment (`pkg/data/*.bin`). A dependency for this would be heavier than the code.

pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), name.split('/').collect());
    p.len() == n.len()
        && p.iter()
            .zip(&n)
            .all(|(p, n)| segment(p.as_bytes(), n.as_bytes()))
}

fn segment(p: &[u8], n: &[u8]) -> bool {
    match p.split_first() {
        None => n.is_empty(),
        Some((b'*', rest)) => (0..=n.len()).any(|i| segment(rest, &n[i..])),
        Some((c, rest)) => n.first() == Some(c) && segment(rest, &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn star_stays_within_a_segment() {
        assert!(matches("pkg/data/*.bin", "pkg/data/model.bin"));
        assert!(matches("pkg/data/*.bin", "pkg/data/.bin"));
        assert!(!matches("pkg/data/*.bin", "pkg/data/sub/model.bin"));
        assert!(!matches("pkg/data/*.bin", "pkg/data/model.bin.txt"));
        assert!(matches("pkg/model.gguf", "pkg/model.gguf"));
        assert!(!matches("pkg/model.gguf", "pkg/model.gguf2"));
        assert!(matches("a/*-*.bin", "a/x-y-z.bin"));
    }
}
