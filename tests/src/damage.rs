//! State files damaged as a failing disk or a stray write would damage them.

use std::path::Path;

use crate::Result;

/// Overwrites, with pseudo-random bytes, each 4 KiB page of `path` that holds `needle` (the
/// pages of the agents and history tables that hold an agent's records, and any stale copies).
pub fn pages_holding(path: &Path, needle: &[u8]) -> Result<usize> {
    let mut bytes = std::fs::read(path)?;
    let pages: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at / 4096 * 4096)
        .filter(|page| *page > 0)
        .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let length = bytes.len();
    for &page in &pages {
        for byte in &mut bytes[page..(page + 4096).min(length)] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
    }
    std::fs::write(path, bytes)?;
    Ok(pages.len())
}
