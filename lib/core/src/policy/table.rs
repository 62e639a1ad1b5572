//! The compact name -> digests table behind every part of a runtime policy.
//!
//! A policy may hold hundreds of thousands of paths, so the table avoids one heap allocation per
//! entry: entries live back to back in one byte arena, each a name followed by its digests
//! (each digest stored as a length byte followed by its raw bytes, the algorithm being implied
//! by the length), and an open-addressing index of `u64` slots maps a name's hash to its entry.
//! A parser writes entries straight into the arena in the order it reads them; iteration (and
//! so serialisation) is in sorted name order, computed on first use when the input was not
//! sorted. The table is immutable once built.
//!
//! Lookups are built for IMA appraisal, where a large policy does not fit in the caches: an
//! index slot holds a 24-bit hash tag (a miss rarely touches an entry), the entry's length and
//! its offset; an entry holds its name and digests side by side (one or two cache lines for a
//! typical path). [`DigestTable::touch`] loads the slots and then the entries of many names
//! with their cache misses in flight together, ahead of the lookups.

use std::fmt;
use std::sync::OnceLock;

/// How far into shared name prefixes [`DigestTable`]'s sort compares 16-byte keys (its
/// recursion depth is this / 16) before it compares whole names.
const SORT_KEY_DEPTH: usize = 4096;

use crate::alg::{HashAlg, MAX_DIGEST_LEN};

/// The allowed digests of one name, in canonical order (shorter algorithms first, then bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DigestList<'a> {
    encoded: &'a [u8],
}

impl<'a> DigestList<'a> {
    /// Iterates over the raw digests.
    pub fn iter(&self) -> DigestIter<'a> {
        DigestIter { rest: self.encoded }
    }

    /// Whether `digest` (raw bytes; the algorithm is implied by its length) is in the list.
    pub fn contains(&self, digest: &[u8]) -> bool {
        self.iter().any(|d| d == digest)
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    /// The digests as `alg:hex` strings, as this project's policy format writes them.
    pub fn to_prefixed_hex(&self) -> Vec<String> {
        self.iter().map(prefixed_hex).collect()
    }
}

impl fmt::Debug for DigestList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(prefixed_hex)).finish()
    }
}

impl<'a> IntoIterator for DigestList<'a> {
    type Item = &'a [u8];
    type IntoIter = DigestIter<'a>;

    fn into_iter(self) -> DigestIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`DigestList`].
#[derive(Debug, Clone)]
pub struct DigestIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for DigestIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (&len, tail) = self.rest.split_first()?;
        let len = usize::from(len);
        let digest = tail.get(..len)?;
        self.rest = tail.get(len..).unwrap_or_default();
        Some(digest)
    }
}

/// `sha256:<hex>` for a raw digest of a supported length, `<hex>` otherwise.
pub(crate) fn prefixed_hex(digest: &[u8]) -> String {
    match HashAlg::from_len(digest.len()) {
        Some(alg) => format!("{}:{}", alg.name(), hex::encode(digest)),
        None => hex::encode(digest),
    }
}

/// What to do when a name appears more than once while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Duplicates {
    /// Union of the digest lists (flat allowlists, generation).
    Merge,
    /// An error naming the name (JSON objects with a repeated key).
    Reject,
}

/// Building a table failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TableError {
    Duplicate(String),
    TooLarge,
}

/// Accumulates entries in arrival order, already in the table's layout (see
/// [`DigestTable`]); [`TableBuilder::finish`] puts each digest list in canonical order,
/// merges or rejects repeated names, and indexes them.
#[derive(Debug, Default, Clone)]
pub(crate) struct TableBuilder {
    data: Vec<u8>,
    entries: Vec<u32>,
    /// Offset of the entry digests are pushed to.
    open: Option<usize>,
    too_large: bool,
}

fn offset(len: usize, too_large: &mut bool) -> u32 {
    u32::try_from(len).unwrap_or_else(|_| {
        *too_large = true;
        0
    })
}

/// The `u32` LE at `at`, or 0 past the end.
fn word_at(data: &[u8], at: usize) -> usize {
    let mut w = [0u8; 4];
    if let Some(b) = data.get(at..at + 4) {
        w.copy_from_slice(b);
    }
    u32::from_le_bytes(w) as usize
}

/// The name and encoded digests of the entry at `at` of `data`.
fn entry_at(data: &[u8], at: usize) -> (&[u8], &[u8]) {
    let name_len = word_at(data, at);
    let digests_len = word_at(data, at + 4);
    let name_start = at + 8;
    let name = data.get(name_start..name_start + name_len).unwrap_or_default();
    let digests_start = name_start + name_len;
    let encoded = data.get(digests_start..digests_start + digests_len).unwrap_or_default();
    (name, encoded)
}

/// Whether an encoded digest list is in canonical order (shorter algorithms first, then
/// bytes) without repeats.
fn is_canonical(encoded: &[u8]) -> bool {
    let mut it = DigestList { encoded }.iter();
    let Some(mut prev) = it.next() else { return true };
    for d in it {
        if (prev.len(), prev) >= (d.len(), d) {
            return false;
        }
        prev = d;
    }
    true
}

impl TableBuilder {
    /// Starts the entry of `name`; digests pushed until [`TableBuilder::end`] belong to it.
    pub(crate) fn begin(&mut self, name: &str) {
        self.end();
        let start = self.data.len();
        let name_len = offset(name.len(), &mut self.too_large);
        self.data.extend_from_slice(&name_len.to_le_bytes());
        self.data.extend_from_slice(&0u32.to_le_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.open = Some(start);
    }

    /// Adds a digest to the open entry. The caller has checked the length (at most 64 bytes).
    pub(crate) fn push_digest(&mut self, digest: &[u8]) {
        debug_assert!(digest.len() <= MAX_DIGEST_LEN);
        if self.open.is_none() || digest.len() > usize::from(u8::MAX) {
            return;
        }
        self.data.push(digest.len() as u8);
        self.data.extend_from_slice(digest);
    }

    pub(crate) fn end(&mut self) {
        if let Some(start) = self.open.take() {
            let name_len = word_at(&self.data, start);
            let digests_len = self.data.len() - start - 8 - name_len;
            let digests_len = offset(digests_len, &mut self.too_large);
            self.data[start + 4..start + 8].copy_from_slice(&digests_len.to_le_bytes());
            let start = offset(start, &mut self.too_large);
            self.entries.push(start);
        }
    }

    /// Adds one (name, digest) pair as its own entry.
    pub(crate) fn add(&mut self, name: &str, digest: Option<&[u8]>) {
        self.begin(name);
        if let Some(d) = digest {
            self.push_digest(d);
        }
        self.end();
    }

    /// Copies every entry of an existing table.
    pub(crate) fn extend_from(&mut self, table: &DigestTable) {
        for (name, list) in table.iter() {
            self.begin(name);
            for d in list.iter() {
                self.push_digest(d);
            }
        }
        self.end();
    }

    /// Puts the digest list of each entry in canonical order, in place (a list without
    /// repeats keeps its length; repeats leave unused bytes after the list).
    fn canonical_lists(&mut self) {
        let mut scratch: Vec<u8> = Vec::new();
        for &start in &self.entries {
            let at = start as usize;
            let (name, encoded) = entry_at(&self.data, at);
            if is_canonical(encoded) {
                continue;
            }
            let digests_start = at + 8 + name.len();
            scratch.clear();
            scratch.extend_from_slice(encoded);
            // Rare (names with several digests given out of order): a list per entry is fine.
            let mut digests: Vec<&[u8]> = DigestList { encoded: &scratch }.iter().collect();
            digests.sort_unstable_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            digests.dedup();
            let mut w = digests_start;
            for d in &digests {
                self.data[w] = d.len() as u8;
                self.data[w + 1..w + 1 + d.len()].copy_from_slice(d);
                w += 1 + d.len();
            }
            let len = (w - digests_start) as u32;
            self.data[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
        }
    }

    pub(crate) fn finish(mut self, duplicates: Duplicates) -> Result<DigestTable, TableError> {
        self.end();
        if self.too_large || self.data.len() >= EMPTY as usize {
            return Err(TableError::TooLarge);
        }
        let data = &self.data;
        let name_of = |start: u32| entry_at(data, start as usize).0;
        let sorted = self.entries.windows(2).all(|w| name_of(w[0]) <= name_of(w[1]));
        if duplicates == Duplicates::Reject {
            // No entry needs merging (or the input is an error), so the entries stay where
            // they are. Unsorted, a repeated name is found while indexing, and the sorted order
            // that serialisation needs is computed only when something iterates the table (a
            // lookup never does): sorting 300k paths costs more than the rest of the build.
            if sorted
                && let Some(w) = self.entries.windows(2).find(|w| name_of(w[0]) == name_of(w[1]))
            {
                let name = String::from_utf8_lossy(name_of(w[0])).into_owned();
                return Err(TableError::Duplicate(name));
            }
            self.canonical_lists();
            let mut table = DigestTable::index(self.data, self.entries);
            if let Some(start) = table.first_repeat {
                let (name, _) = table.entry(start);
                return Err(TableError::Duplicate(String::from_utf8_lossy(name).into_owned()));
            }
            table.sorted = sorted;
            return Ok(table);
        }

        // Merging: equal names side by side, their digests gathered into one entry. The order
        // among equal names does not matter, the digests of a group being sorted.
        let mut order = self.entries.clone();
        if !sorted {
            order.sort_unstable_by(|a, b| name_of(*a).cmp(name_of(*b)));
        }
        let mut out = Vec::with_capacity(data.len());
        let mut entries: Vec<u32> = Vec::with_capacity(order.len());
        let mut scratch: Vec<&[u8]> = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let name = name_of(order[i]);
            let mut j = i + 1;
            while j < order.len() && name_of(order[j]) == name {
                j += 1;
            }
            scratch.clear();
            for &start in &order[i..j] {
                let encoded = entry_at(data, start as usize).1;
                scratch.extend(DigestList { encoded }.iter());
            }
            let start = push_entry(&mut out, name, &mut scratch);
            entries.push(offset(start, &mut self.too_large));
            i = j;
        }
        if self.too_large || out.len() >= EMPTY as usize {
            return Err(TableError::TooLarge);
        }
        let mut table = DigestTable::index(out, entries);
        table.sorted = true;
        Ok(table)
    }
}

/// Appends one entry (`u32 LE name length | u32 LE digests length | name | digests`, the
/// digests in canonical order without repeats) and returns its offset.
fn push_entry(data: &mut Vec<u8>, name: &[u8], digests: &mut Vec<&[u8]>) -> usize {
    if digests.len() > 1 {
        digests.sort_unstable_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        digests.dedup();
    }
    let start = data.len();
    let digests_len: usize = digests.iter().map(|d| d.len() + 1).sum();
    // Lengths past u32 make the table too large; the caller checks the total.
    data.extend_from_slice(&(name.len() as u32).to_le_bytes());
    data.extend_from_slice(&(digests_len as u32).to_le_bytes());
    data.extend_from_slice(name);
    for d in digests.iter() {
        data.push(d.len() as u8);
        data.extend_from_slice(d);
    }
    start
}

const EMPTY: u32 = u32::MAX;
/// The bits of an index slot that hold the high 24 bits of the name's hash; below them, 8 bits
/// hold the entry's length in bytes (capped at 255) and the low 32 bits its offset.
const TAG: u64 = 0xffff_ff00_0000_0000;

/// An immutable, hash-indexed map from names to digest lists, iterated in sorted order.
#[derive(Clone, Default)]
pub(crate) struct DigestTable {
    /// Entries back to back, sorted by name when `sorted`, in arrival order otherwise.
    data: Vec<u8>,
    /// Offset of each entry in `data`, in the order of `data`.
    entries: Vec<u32>,
    /// Whether `entries` is in sorted name order.
    sorted: bool,
    /// The offsets in sorted name order, when `entries` is not: computed on first iteration.
    order: OnceLock<Vec<u32>>,
    /// Open addressing, linear probing, load factor at most 1/2: hash tag, entry length and
    /// offset (see [`TAG`]), or `EMPTY` in the low half for a free slot.
    slots: Vec<u64>,
    /// The first entry whose name an earlier entry already has (not indexed).
    first_repeat: Option<u32>,
}

impl fmt::Debug for DigestTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for DigestTable {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for DigestTable {}

/// A fast non-cryptographic hash of a name: 16 bytes per 64x64->128-bit multiply, folded
/// (the construction of wyhash), the tail read as overlapping words. Keys come from the policy
/// (trusted); an attacker-chosen name only probes, and probe runs are bounded by the clusters
/// the policy's own names form, so crafted collisions cannot slow lookups down.
fn hash(name: &[u8]) -> u64 {
    const P0: u64 = 0xa076_1d64_78bd_642f;
    const P1: u64 = 0xe703_7ed1_a0b4_28db;
    const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
    fn fold(a: u64, b: u64) -> u64 {
        let r = u128::from(a) * u128::from(b);
        (r as u64) ^ ((r >> 64) as u64)
    }
    fn word(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        if let Some(s) = b.get(at..at + 8) {
            w.copy_from_slice(s);
        }
        u64::from_le_bytes(w)
    }
    fn half(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 4];
        if let Some(s) = b.get(at..at + 4) {
            w.copy_from_slice(s);
        }
        u64::from(u32::from_le_bytes(w))
    }
    let len = name.len();
    let mut h = P0 ^ (len as u64).wrapping_mul(P2);
    let (a, b) = if len > 16 {
        let mut at = 0;
        while len - at > 16 {
            h = fold(word(name, at) ^ P1, word(name, at + 8) ^ h);
            at += 16;
        }
        (word(name, len - 16), word(name, len - 8))
    } else if len >= 8 {
        (word(name, 0), word(name, len - 8))
    } else if len >= 4 {
        (half(name, 0), half(name, len - 4))
    } else if len > 0 {
        let byte = |i: usize| u64::from(name[i]);
        ((byte(0) << 16) | (byte(len / 2) << 8) | byte(len - 1), 0)
    } else {
        (0, 0)
    };
    h = fold(a ^ P1, b ^ h);
    fold(h ^ P2, h ^ P1 ^ len as u64)
}

impl DigestTable {
    fn index(data: Vec<u8>, entries: Vec<u32>) -> DigestTable {
        let capacity = (entries.len() * 2).next_power_of_two().max(8);
        let mask = capacity - 1;
        let mut table = DigestTable {
            data,
            entries,
            sorted: false,
            order: OnceLock::new(),
            slots: vec![u64::from(EMPTY); capacity],
            first_repeat: None,
        };
        'entries: for i in 0..table.entries.len() {
            let start = table.entries[i];
            let (name, _) = table.entry(start);
            let h = hash(name);
            let tag = h & TAG;
            let mut s = (h as usize) & mask;
            loop {
                let slot = table.slots[s];
                if slot as u32 == EMPTY {
                    break;
                }
                if slot & TAG == tag && table.entry(slot as u32).0 == name {
                    table.first_repeat.get_or_insert(start);
                    continue 'entries;
                }
                s = (s + 1) & mask;
            }
            let span = table.entry_len(start).min(usize::from(u8::MAX)) as u64;
            table.slots[s] = tag | (span << 32) | u64::from(start);
        }
        table
    }

    /// The length in bytes of the entry at `start`.
    fn entry_len(&self, start: u32) -> usize {
        let (name, list) = self.entry(start);
        8 + name.len() + list.encoded.len()
    }

    /// The name and digest list of the entry at `start`.
    fn entry(&self, start: u32) -> (&[u8], DigestList<'_>) {
        let (name, encoded) = entry_at(&self.data, start as usize);
        (name, DigestList { encoded })
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The digests allowed for `name`, if the name is in the table.
    pub(crate) fn get(&self, name: &str) -> Option<DigestList<'_>> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let name = name.as_bytes();
        let h = hash(name);
        let tag = h & TAG;
        let mut s = (h as usize) & mask;
        loop {
            let slot = self.slots[s];
            if slot as u32 == EMPTY {
                return None;
            }
            if slot & TAG == tag {
                let (candidate, list) = self.entry(slot as u32);
                if candidate == name {
                    return Some(list);
                }
            }
            s = (s + 1) & mask;
        }
    }

    /// Reads the index slots of `names` and the first bytes of the entries they point to, so
    /// that following [`DigestTable::get`] calls find them in the cache. The loads of one
    /// phase do not depend on each other, so their cache misses overlap: hashes first, then
    /// all slots, then all entries. Returns a value derived from the loads (meaningless, for
    /// the caller to keep them alive).
    pub(crate) fn touch(&self, names: &[&str]) -> u64 {
        const CHUNK: usize = 32;
        if self.slots.is_empty() {
            return 0;
        }
        let mask = self.slots.len() - 1;
        let last = self.data.len().saturating_sub(1);
        let mut acc = 0u64;
        for chunk in names.chunks(CHUNK) {
            let mut slots = [0u64; CHUNK];
            for (slot, name) in slots.iter_mut().zip(chunk) {
                *slot = (hash(name.as_bytes()) as usize & mask) as u64;
            }
            for slot in slots.iter_mut().take(chunk.len()) {
                *slot = self.slots.get(*slot as usize).copied().unwrap_or(u64::from(EMPTY));
            }
            for slot in slots.iter().take(chunk.len()) {
                // A free slot reads the last byte of the data: harmless. Each cache line of
                // the entry is read (at most four: the length is capped at 255).
                let at = (*slot as u32 as usize).min(last);
                let end = (at + (*slot >> 32) as u8 as usize).min(last);
                let mut line = at;
                while line <= end {
                    acc = acc.wrapping_add(u64::from(self.data.get(line).copied().unwrap_or(0)));
                    line = (line | 63) + 1;
                }
            }
        }
        acc
    }

    /// Entry offsets in sorted name order.
    fn sorted_entries(&self) -> &[u32] {
        if self.sorted {
            return &self.entries;
        }
        self.order.get_or_init(|| {
            let mut keyed: Vec<(u128, u32)> =
                self.entries.iter().map(|&start| (self.sort_key(start, 0), start)).collect();
            self.sort_from(&mut keyed, 0);
            keyed.into_iter().map(|(_, start)| start).collect()
        })
    }

    /// Bytes `depth..depth + 16` of the name at `start`, big-endian, zero-padded: comparing
    /// keys compares 16 bytes of the names at once.
    fn sort_key(&self, start: u32, depth: usize) -> u128 {
        let name = self.entry(start).0;
        let mut key = [0u8; 16];
        if let Some(rest) = name.get(depth..) {
            let n = rest.len().min(16);
            key[..n].copy_from_slice(&rest[..n]);
        }
        u128::from_be_bytes(key)
    }

    /// Sorts `keyed` (names that agree before `depth`, keyed at `depth`) by name: by key,
    /// then each run of equal keys by the next 16 bytes. Paths share long prefixes, so this
    /// compares integers where a comparison sort would compare the same prefixes again and
    /// again. A run whose names all end within this key is ordered by whole names, which
    /// also orders a name before the names it is a prefix of.
    fn sort_from(&self, keyed: &mut [(u128, u32)], depth: usize) {
        keyed.sort_unstable_by_key(|e| e.0);
        let mut i = 0;
        while i < keyed.len() {
            let mut j = i + 1;
            while j < keyed.len() && keyed[j].0 == keyed[i].0 {
                j += 1;
            }
            if j - i > 1 {
                let run = &mut keyed[i..j];
                // Beyond SORT_KEY_DEPTH bytes of shared prefix (no real path has one) the run
                // is ordered by whole names, so the recursion stays shallow whatever a policy
                // holds.
                if depth + 16 >= SORT_KEY_DEPTH
                    || run.iter().all(|e| self.entry(e.1).0.len() <= depth + 16)
                {
                    run.sort_unstable_by(|a, b| self.entry(a.1).0.cmp(self.entry(b.1).0));
                } else {
                    for e in run.iter_mut() {
                        e.0 = self.sort_key(e.1, depth + 16);
                    }
                    self.sort_from(run, depth + 16);
                }
            }
            i = j;
        }
    }

    /// Entries in canonical (byte-wise sorted name) order, names as bytes (UTF-8: they were
    /// added as `str`).
    pub(crate) fn iter_raw(&self) -> impl Iterator<Item = (&[u8], DigestList<'_>)> + '_ {
        const AHEAD: usize = 32;
        let order = self.sorted_entries();
        let mut sink = 0u8;
        order.iter().enumerate().map(move |(i, &start)| {
            // When the table is in arrival order, sorted order reads the entries all over the
            // data; every AHEAD entries, the first bytes of the next AHEAD entries are read
            // together so that their cache misses overlap (as `touch` does for lookups).
            if i % AHEAD == 0 && !self.sorted {
                for &ahead in order.iter().skip(i + AHEAD).take(AHEAD) {
                    sink ^= self.data.get(ahead as usize).copied().unwrap_or(0);
                }
                std::hint::black_box(sink);
            }
            self.entry(start)
        })
    }

    /// Entries in canonical (byte-wise sorted name) order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, DigestList<'_>)> + '_ {
        self.sorted_entries().iter().map(|&start| {
            let (name, list) = self.entry(start);
            (std::str::from_utf8(name).unwrap_or_default(), list)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(pairs: &[(&str, &[u8])], dup: Duplicates) -> Result<DigestTable, TableError> {
        let mut b = TableBuilder::default();
        for (n, d) in pairs {
            b.add(n, Some(d));
        }
        b.finish(dup)
    }

    #[test]
    fn lookup_and_merge() {
        let a = [1u8; 20];
        let b = [2u8; 32];
        let t = build(&[("/b", &b), ("/a", &a), ("/b", &a), ("/b", &b)], Duplicates::Merge)
            .expect("builds");
        assert_eq!(t.len(), 2);
        let list = t.get("/b").expect("present");
        assert_eq!(list.iter().collect::<Vec<_>>(), vec![&a[..], &b[..]]);
        assert!(list.contains(&b) && !list.contains(&[2u8; 20]));
        assert!(t.get("/c").is_none());
        assert!(t.get("").is_none());
        let names: Vec<_> = t.iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["/a", "/b"]);
    }

    /// Every byte of a name, at every length (which exercises each tail case), changes the
    /// hash.
    #[test]
    fn hash_mixes_every_byte() {
        for len in 0..70usize {
            let name: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let h = hash(&name);
            for at in 0..len {
                let mut other = name.clone();
                other[at] ^= 0x01;
                assert_ne!(hash(&other), h, "len {len}, byte {at}");
            }
            let mut longer = name.clone();
            longer.push(0);
            assert_ne!(hash(&longer), h, "len {len} vs trailing NUL");
        }
    }

    /// Touching is harmless on any table and name, and lookups after it answer the same.
    #[test]
    fn touch_changes_no_answer() {
        assert_eq!(DigestTable::default().touch(&["/a", ""]), 0);
        let mut b = TableBuilder::default();
        let names: Vec<String> = (0..300).map(|i| format!("/n/{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            b.add(n, Some(&[i as u8; 32]));
        }
        let t = b.finish(Duplicates::Reject).expect("builds");
        let mut queries: Vec<&str> = names.iter().map(String::as_str).collect();
        queries.extend(["", "/", "/n/300", "/n/-1"]);
        let before: Vec<_> = queries.iter().map(|q| t.get(q)).collect();
        t.touch(&queries);
        let after: Vec<_> = queries.iter().map(|q| t.get(q)).collect();
        assert_eq!(before, after);
        assert_eq!(after.iter().filter(|l| l.is_some()).count(), 300);
    }

    /// Names in arrival order are iterated in byte-wise sorted order, whatever their shared
    /// prefixes (longer than a 16-byte key, prefixes of each other, NUL bytes), and every
    /// name is found.
    /// Names sharing a 1 MiB prefix are sorted on a thread with a small stack: the sort does
    /// not recurse once per 16 bytes of a hostile policy's prefixes.
    #[test]
    fn a_long_shared_prefix_sorts_within_a_small_stack() {
        let prefix = "/a".repeat(512 * 1024);
        let names = [format!("{prefix}/z"), format!("{prefix}/b"), format!("{prefix}/m/n")];
        let sorted = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut b = TableBuilder::default();
                for n in &names {
                    b.add(n, Some(&[1; 32]));
                }
                let t = b.finish(Duplicates::Reject).expect("unique names");
                t.iter().map(|(n, _)| n[prefix.len()..].to_owned()).collect::<Vec<_>>()
            })
            .expect("spawn")
            .join()
            .expect("no overflow");
        assert_eq!(sorted, ["/b", "/m/n", "/z"]);
    }

    #[test]
    fn unsorted_input_iterates_sorted() {
        let long = "/usr/lib/python3.12/site-packages/pkg/";
        let mut names: Vec<String> = vec![
            String::new(),
            "a".into(),
            "a\0".into(),
            "a\0\0".into(),
            "ab".into(),
            format!("{long}x"),
            long.into(),
            format!("{long}\0"),
            format!("{long}x/y"),
            "é".into(),
            "/usr/lib/python3.12/site-packages/pkf/zzz".into(),
        ];
        for i in (0..2000).rev() {
            names.push(format!("{long}{}/{}", i % 37, i));
        }
        let mut b = TableBuilder::default();
        for (i, n) in names.iter().enumerate() {
            b.add(n, Some(&[i as u8; 32]));
        }
        let t = b.finish(Duplicates::Reject).expect("unique names");
        assert!(!t.sorted, "the input is not in order");
        let mut expected: Vec<&str> = names.iter().map(String::as_str).collect();
        expected.sort_unstable();
        let got: Vec<&str> = t.iter().map(|(n, _)| n).collect();
        assert_eq!(got, expected);
        for (i, n) in names.iter().enumerate() {
            assert!(t.get(n).expect("found").contains(&[i as u8; 32]), "{n:?}");
        }
        // Equal to the same names given in order (which takes the sorted path).
        let mut b = TableBuilder::default();
        for n in &expected {
            let i = names.iter().position(|x| x == n).expect("present");
            b.add(n, Some(&[i as u8; 32]));
        }
        let in_order = b.finish(Duplicates::Reject).expect("unique names");
        assert!(in_order.sorted);
        assert_eq!(t, in_order);
    }

    /// A name repeated far apart in unsorted input is found while indexing; several digests
    /// of one name are put in canonical order.
    #[test]
    fn unsorted_input_rejects_repeats_and_orders_digests() {
        let mut b = TableBuilder::default();
        b.begin("/z");
        b.push_digest(&[2; 32]);
        b.push_digest(&[1; 32]);
        b.push_digest(&[9; 20]);
        b.push_digest(&[1; 32]);
        b.add("/a", Some(&[0; 32]));
        let t = b.clone().finish(Duplicates::Reject).expect("unique names");
        let list: Vec<&[u8]> = t.get("/z").expect("found").iter().collect();
        assert_eq!(list, vec![&[9u8; 20][..], &[1; 32][..], &[2; 32][..]]);
        b.add("/m", None);
        b.add("/z", Some(&[3; 32]));
        assert_eq!(b.finish(Duplicates::Reject).err(), Some(TableError::Duplicate("/z".into())));
    }

    #[test]
    fn rejects_duplicates_when_asked() {
        let d = [0u8; 20];
        assert_eq!(
            build(&[("/x", &d), ("/x", &d)], Duplicates::Reject).err(),
            Some(TableError::Duplicate("/x".into()))
        );
    }

    #[test]
    fn many_names_all_found() {
        let mut b = TableBuilder::default();
        for i in 0..10_000u32 {
            b.add(&format!("/usr/lib/file{i}"), Some(&[i as u8; 32]));
        }
        let t = b.finish(Duplicates::Reject).expect("builds");
        for i in 0..10_000u32 {
            let l = t.get(&format!("/usr/lib/file{i}")).expect("found");
            assert!(l.contains(&[i as u8; 32]));
        }
        assert!(t.get("/usr/lib/file10000").is_none());
    }
}
