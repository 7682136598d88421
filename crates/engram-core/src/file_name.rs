//! The one rule for file names that come from outside a node: from a peer
//! (a segment ATTACH), a stored manifest (a segment's, a snapshot's) or a
//! request (a snapshot id). Such a name is joined to a local directory, so
//! it must be one plain name or it could write or read outside it.

/// Whether `name` is one plain file name: not empty, not `.` or `..`, no
/// separator, no NUL, at most 255 bytes. Checked before anything is
/// written or read under it.
pub fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_file_names() {
        for ok in ["a.bin", "segment-1.sectors", "..hidden", "a..b"] {
            assert!(plain_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "/abs", "a\\b", "a\0b"] {
            assert!(!plain_file_name(bad), "{bad:?}");
        }
        assert!(!plain_file_name(&"x".repeat(256)));
    }
}
