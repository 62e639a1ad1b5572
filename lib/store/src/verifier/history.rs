//! The attestation history of agents in the redb file, kept in blocks.
//!
//! Every round adds a record to its agent's history. Stored one record per key, each commit
//! (about one round of every agent) would copy one leaf page per agent, and more pages above
//! them the longer the histories grow. Here an agent's newest records are its *open block*: one
//! value in a table keyed by agent id, where neighbouring agents share leaf pages. When the
//! open block holds [`BLOCK`] records it moves, whole, to the table of full blocks, keyed by
//! agent id and first sequence. A commit writes a page per few agents, and one block per agent
//! every [`BLOCK`] rounds.
//!
//! The count limit (`history_max_entries`) moves the open block's `visible_from` up: records
//! below it are gone for readers at once, and a full block is removed when its newest record
//! falls below it. `visible_from` never moves down, so a raised limit does not bring records
//! back; reads need no setting.
//!
//! A record is placed by its sequence: one already stored (a commit applied again) is
//! replaced, in the open block or in the full block that holds it.

use std::ops::Bound;

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{HISTORY, HistoryRecord, decode, encode, older_than};
use crate::StoreError;

/// Records per full block.
pub(super) const BLOCK: usize = 16;

/// Full blocks: key `<agent id>\0<first sequence, 20 digits>`; value: the records, oldest
/// first ([`BLOCK`] of them, fewer once some were pruned by age).
const BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("history_blocks");
/// Open blocks: key: agent id; value: an [`OpenBlock`].
pub(super) const OPEN: TableDefinition<&str, &[u8]> = TableDefinition::new("history_open");

/// An agent's newest records and where its history starts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct OpenBlock {
    /// The oldest sequence readers see: what lies below fell out of the count limit.
    visible_from: u64,
    /// The newest sequence moved to a full block (0: none yet).
    flushed_upto: u64,
    /// Newer than `flushed_upto`, fewer than [`BLOCK`], oldest first.
    records: Vec<HistoryRecord>,
}

fn block_key(agent_id: &str, first: u64) -> String {
    format!("{agent_id}\0{first:020}")
}

/// The keys of every block of `agent_id`.
fn agent_range(agent_id: &str) -> (String, String) {
    (format!("{agent_id}\0"), format!("{agent_id}\u{1}"))
}

fn blocks_error<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::table("history_blocks", e)
}

fn open_error<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::table("history_open", e)
}

fn read_open(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    agent_id: &str,
) -> Result<OpenBlock, StoreError> {
    match table.get(agent_id).map_err(open_error)? {
        Some(value) => decode("history_open", agent_id, value.value()),
        None => Ok(OpenBlock::default()),
    }
}

/// Puts `record` in its place among `records` (ordered by sequence), replacing one of the
/// same sequence.
fn place(records: &mut Vec<HistoryRecord>, record: &HistoryRecord) {
    match records.binary_search_by_key(&record.sequence, |r| r.sequence) {
        Ok(i) => records[i] = record.clone(),
        Err(i) => records.insert(i, record.clone()),
    }
}

/// [`BLOCKS`] or [`OPEN`], open for writing.
type Table<'txn> = redb::Table<'txn, &'static str, &'static [u8]>;

/// Stores `records` (oldest first, at least one) as a full block of `agent_id`.
fn put_block(
    blocks: &mut Table<'_>,
    agent_id: &str,
    records: &[HistoryRecord],
) -> Result<(), StoreError> {
    let key = block_key(agent_id, records[0].sequence);
    let bytes = encode("history_blocks", &key, &records)?;
    blocks.insert(key.as_str(), bytes.as_slice()).map_err(blocks_error)?;
    Ok(())
}

fn put_open(open: &mut Table<'_>, agent_id: &str, block: &OpenBlock) -> Result<(), StoreError> {
    let bytes = encode("history_open", agent_id, block)?;
    open.insert(agent_id, bytes.as_slice()).map_err(open_error)?;
    Ok(())
}

impl OpenBlock {
    /// Moves the records (at least one) to a full block.
    fn flush(&mut self, blocks: &mut Table<'_>, agent_id: &str) -> Result<(), StoreError> {
        let full = std::mem::take(&mut self.records);
        self.flushed_upto = full[full.len() - 1].sequence;
        put_block(blocks, agent_id, &full)
    }
}

/// Creates both tables (in a migration).
pub(super) fn create(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(BLOCKS).map_err(blocks_error)?;
    txn.open_table(OPEN).map_err(open_error)?;
    Ok(())
}

/// Adds `records`, sorted by agent id and then sequence; keeps each agent's newest `limit`
/// (0: all).
pub(super) fn append(
    txn: &WriteTransaction,
    records: &[(&str, &HistoryRecord)],
    limit: u64,
) -> Result<(), StoreError> {
    let mut blocks = txn.open_table(BLOCKS).map_err(blocks_error)?;
    let mut open = txn.open_table(OPEN).map_err(open_error)?;
    for group in records.chunk_by(|a, b| a.0 == b.0) {
        let agent_id = group[0].0;
        // An open block this version cannot decode (none is written so) is started afresh
        // rather than stopping every agent's writes; an error reading the file stops them.
        let mut block = match read_open(&open, agent_id) {
            Err(StoreError::Decode { .. }) => OpenBlock::default(),
            read => read?,
        };
        for (_, record) in group {
            if record.sequence < block.visible_from {
                continue;
            }
            if record.sequence <= block.flushed_upto {
                place_in_blocks(&mut blocks, agent_id, record)?;
                continue;
            }
            place(&mut block.records, record);
            let newest = block.records[block.records.len() - 1].sequence;
            if limit > 0 && newest >= limit {
                block.visible_from = block.visible_from.max(newest - limit + 1);
            }
            if block.records.len() < BLOCK {
                continue;
            }
            block.flush(&mut blocks, agent_id)?;
            drop_fallen(&mut blocks, agent_id, block.visible_from)?;
        }
        put_open(&mut open, agent_id, &block)?;
    }
    Ok(())
}

/// The key and records of the newest (`newest`) or the oldest block within `range`.
fn block_in(
    blocks: &Table<'_>,
    range: std::ops::Range<&str>,
    newest: bool,
) -> Result<Option<(String, Vec<HistoryRecord>)>, StoreError> {
    let mut entries = blocks.range::<&str>(range).map_err(blocks_error)?;
    let entry = if newest { entries.next_back() } else { entries.next() };
    let Some(entry) = entry else { return Ok(None) };
    let (key, value) = entry.map_err(blocks_error)?;
    let records = decode("history_blocks", key.value(), value.value())?;
    Ok(Some((key.value().to_owned(), records)))
}

/// Puts a record that belongs among the full blocks of `agent_id` (its sequence is not newer
/// than the last one moved there) in the block that holds its sequence, or would.
fn place_in_blocks(
    blocks: &mut Table<'_>,
    agent_id: &str,
    record: &HistoryRecord,
) -> Result<(), StoreError> {
    let (start, end) = agent_range(agent_id);
    // The last block to start at or before the sequence (the key just after it bounds the
    // range), else the first one; none when pruning by age took them all.
    let after = block_key(agent_id, record.sequence.saturating_add(1));
    let found = match block_in(blocks, start.as_str()..after.as_str(), true)? {
        Some(found) => Some(found),
        None => block_in(blocks, start.as_str()..end.as_str(), false)?,
    };
    let (old_key, mut records) = found.unwrap_or_default();
    place(&mut records, record);
    if !old_key.is_empty() {
        blocks.remove(old_key.as_str()).map_err(blocks_error)?;
    }
    put_block(blocks, agent_id, &records)
}

/// Removes the oldest blocks of `agent_id` while their newest record is below
/// `visible_from`.
fn drop_fallen(
    blocks: &mut Table<'_>,
    agent_id: &str,
    visible_from: u64,
) -> Result<(), StoreError> {
    let (start, end) = agent_range(agent_id);
    while let Some((key, records)) = block_in(blocks, start.as_str()..end.as_str(), false)? {
        if records.last().is_some_and(|r| r.sequence >= visible_from) {
            break;
        }
        blocks.remove(key.as_str()).map_err(blocks_error)?;
    }
    Ok(())
}

/// Removes the whole history of `agent_id`.
pub(super) fn remove(txn: &WriteTransaction, agent_id: &str) -> Result<(), StoreError> {
    let mut blocks = txn.open_table(BLOCKS).map_err(blocks_error)?;
    let (start, end) = agent_range(agent_id);
    blocks.retain_in(start.as_str()..end.as_str(), |_, _| false).map_err(blocks_error)?;
    let mut open = txn.open_table(OPEN).map_err(open_error)?;
    open.remove(agent_id).map_err(open_error)?;
    Ok(())
}

/// The history of `agent_id`, newest first: at most `limit` records with a sequence below
/// `before` (from the newest when `None`), within the count limit.
pub(super) fn read(
    txn: &ReadTransaction,
    agent_id: &str,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<HistoryRecord>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let blocks = txn.open_table(BLOCKS).map_err(blocks_error)?;
    let open = txn.open_table(OPEN).map_err(open_error)?;
    let block = read_open(&open, agent_id)?;
    let (start, end) = agent_range(agent_id);
    let visible_from = block.visible_from;
    let below = before.unwrap_or(u64::MAX);
    let mut out = Vec::new();
    // Takes `record` if it is shown; true once nothing older is wanted.
    let mut take = |record: HistoryRecord| {
        let sequence = record.sequence;
        if sequence < below && sequence >= visible_from {
            out.push(record);
        }
        out.len() >= limit || sequence <= visible_from
    };
    for record in block.records.into_iter().rev() {
        if take(record) {
            return Ok(out);
        }
    }
    // A block whose first sequence is `before` or above holds nothing below it.
    let upper = match before {
        Some(sequence) => block_key(agent_id, sequence),
        None => end,
    };
    let range = blocks
        .range::<&str>((Bound::Included(start.as_str()), Bound::Excluded(upper.as_str())))
        .map_err(blocks_error)?;
    for entry in range.rev() {
        let (key, value) = entry.map_err(blocks_error)?;
        let records: Vec<HistoryRecord> = decode("history_blocks", key.value(), value.value())?;
        for record in records.into_iter().rev() {
            if take(record) {
                return Ok(out);
            }
        }
    }
    Ok(out)
}

/// Removes the records older than `cutoff` (seconds since the epoch), and any block that
/// cannot be decoded (counted as one); returns how many.
pub(super) fn prune_older(txn: &WriteTransaction, cutoff: i64) -> Result<u64, StoreError> {
    let old = |record: &HistoryRecord| older_than(&record.at, cutoff);
    let mut pruned = 0;
    let mut blocks = txn.open_table(BLOCKS).map_err(blocks_error)?;
    let mut rest: Vec<(String, Vec<HistoryRecord>)> = Vec::new();
    blocks
        .retain(|key, value| match decode::<Vec<HistoryRecord>>("history_blocks", key, value) {
            Ok(records) => {
                let count = records.iter().filter(|r| old(r)).count();
                if count == 0 {
                    return true;
                }
                pruned += count as u64;
                let kept: Vec<HistoryRecord> = records.into_iter().filter(|r| !old(r)).collect();
                if !kept.is_empty()
                    && let Some(agent_id) = key.split('\0').next()
                {
                    rest.push((agent_id.to_owned(), kept));
                }
                false
            }
            Err(_) => {
                pruned += 1;
                false
            }
        })
        .map_err(blocks_error)?;
    for (agent_id, records) in rest {
        put_block(&mut blocks, &agent_id, &records)?;
    }
    let mut open = txn.open_table(OPEN).map_err(open_error)?;
    let mut changed: Vec<(String, Option<OpenBlock>)> = Vec::new();
    for entry in open.iter().map_err(open_error)? {
        let (key, value) = entry.map_err(open_error)?;
        let Ok(mut block) = decode::<OpenBlock>("history_open", key.value(), value.value()) else {
            pruned += 1;
            changed.push((key.value().to_owned(), None));
            continue;
        };
        let before = block.records.len();
        block.records.retain(|r| !old(r));
        if block.records.len() < before {
            pruned += (before - block.records.len()) as u64;
            changed.push((key.value().to_owned(), Some(block)));
        }
    }
    for (agent_id, block) in changed {
        match block {
            Some(block) => put_open(&mut open, &agent_id, &block)?,
            None => {
                open.remove(agent_id.as_str()).map_err(open_error)?;
            }
        }
    }
    Ok(pruned)
}

/// Reads and decodes every block and open block; returns how many records they hold.
pub(super) fn check(txn: &ReadTransaction) -> Result<u64, StoreError> {
    let mut records = 0;
    let blocks = txn.open_table(BLOCKS).map_err(blocks_error)?;
    for entry in blocks.iter().map_err(blocks_error)? {
        let (key, value) = entry.map_err(blocks_error)?;
        let block: Vec<HistoryRecord> = decode("history_blocks", key.value(), value.value())?;
        records += block.len() as u64;
    }
    let open = txn.open_table(OPEN).map_err(open_error)?;
    for entry in open.iter().map_err(open_error)? {
        let (key, value) = entry.map_err(open_error)?;
        let block: OpenBlock = decode("history_open", key.value(), value.value())?;
        records += block.records.len() as u64;
    }
    Ok(records)
}

/// Moves the records of the table of one record per key (schema versions 1 to 3) into
/// blocks, each agent's newest into its open block, all visible (the count limit applies from
/// the next commit), and deletes that table.
pub(super) fn move_into_blocks(txn: &WriteTransaction) -> Result<(), StoreError> {
    create(txn)?;
    let mut blocks = txn.open_table(BLOCKS).map_err(blocks_error)?;
    let mut open = txn.open_table(OPEN).map_err(open_error)?;
    let old = txn.open_table(HISTORY).map_err(|e| StoreError::table("history", e))?;
    let mut agent: Option<String> = None;
    let mut block = OpenBlock::default();
    for entry in old.iter().map_err(|e| StoreError::table("history", e))? {
        let (key, value) = entry.map_err(|e| StoreError::table("history", e))?;
        let key = key.value();
        let agent_id = key.split('\0').next().unwrap_or(key);
        let record: HistoryRecord = decode("history", key, value.value())?;
        if agent.as_deref() != Some(agent_id)
            && let Some(previous) = agent.replace(agent_id.to_owned())
        {
            put_open(&mut open, &previous, &std::mem::take(&mut block))?;
        }
        block.records.push(record);
        if block.records.len() == BLOCK {
            block.flush(&mut blocks, agent_id)?;
        }
    }
    if let Some(previous) = agent {
        put_open(&mut open, &previous, &block)?;
    }
    drop(old);
    txn.delete_table(HISTORY).map_err(|e| StoreError::table("history", e))?;
    Ok(())
}
