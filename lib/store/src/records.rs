//! Typed tables: string keys, serde values encoded with postcard.

use std::marker::PhantomData;
use std::ops::Bound;

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StoreError;

/// A table of records of type `V` keyed by strings (agent ids and the like), kept in key order.
///
/// postcard encodings carry no field names, so changing `V` needs a [`crate::Migration`] that
/// re-encodes the table; that is the point of the schema version.
#[derive(Debug)]
pub struct Records<V> {
    name: &'static str,
    record: PhantomData<fn() -> V>,
}

impl<V> Records<V> {
    pub const fn new(name: &'static str) -> Self {
        Records { name, record: PhantomData }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn definition(&self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name)
    }
}

impl<V: Serialize + DeserializeOwned> Records<V> {
    /// Creates the table (in a migration); a table that exists is left as it is.
    pub fn create(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        txn.open_table(self.definition()).map(drop).map_err(|e| StoreError::table(self.name, e))
    }

    /// The record under `key` in a read snapshot.
    pub fn get(&self, txn: &ReadTransaction, key: &str) -> Result<Option<V>, StoreError> {
        let table =
            txn.open_table(self.definition()).map_err(|e| StoreError::table(self.name, e))?;
        self.get_in(&table, key)
    }

    /// The record under `key` inside a write transaction (to decide what to write).
    pub fn get_for_update(
        &self,
        txn: &WriteTransaction,
        key: &str,
    ) -> Result<Option<V>, StoreError> {
        let table =
            txn.open_table(self.definition()).map_err(|e| StoreError::table(self.name, e))?;
        self.get_in(&table, key)
    }

    /// Inserts or replaces the record under `key`.
    pub fn insert(&self, txn: &WriteTransaction, key: &str, value: &V) -> Result<(), StoreError> {
        let bytes = postcard::to_allocvec(value).map_err(|source| StoreError::Encode {
            table: self.name,
            key: key.to_owned(),
            source,
        })?;
        let mut table =
            txn.open_table(self.definition()).map_err(|e| StoreError::table(self.name, e))?;
        table.insert(key, bytes.as_slice()).map_err(|e| StoreError::table(self.name, e))?;
        Ok(())
    }

    /// Inserts or replaces each `(key, record)` with the table opened once.
    pub fn insert_all<'a>(
        &self,
        txn: &WriteTransaction,
        records: impl IntoIterator<Item = (&'a str, &'a V)>,
    ) -> Result<(), StoreError>
    where
        V: 'a,
    {
        let mut table =
            txn.open_table(self.definition()).map_err(|e| StoreError::table(self.name, e))?;
        for (key, value) in records {
            let bytes = postcard::to_allocvec(value).map_err(|source| StoreError::Encode {
                table: self.name,
                key: key.to_owned(),
                source,
            })?;
            table.insert(key, bytes.as_slice()).map_err(|e| StoreError::table(self.name, e))?;
        }
        Ok(())
    }

    /// Removes the record under `key`; returns whether there was one.
    pub fn remove(&self, txn: &WriteTransaction, key: &str) -> Result<bool, StoreError> {
        let mut table =
            txn.open_table(self.definition()).map_err(|e| StoreError::table(self.name, e))?;
        let removed = table.remove(key).map_err(|e| StoreError::table(self.name, e))?;
        Ok(removed.is_some())
    }

    /// At most `limit` records in key order, starting after `after` (from the first when
    /// `None`).
    pub fn page(
        &self,
        txn: &ReadTransaction,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, V)>, StoreError> {
        let table =
            txn.open_table(self.definition()).map_err(|e| StoreError::table(self.name, e))?;
        let start = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        let range = table
            .range::<&str>((start, Bound::Unbounded))
            .map_err(|e| StoreError::table(self.name, e))?;
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (key, value) = entry.map_err(|e| StoreError::table(self.name, e))?;
            let key = key.value().to_owned();
            let record = self.decode(&key, value.value())?;
            out.push((key, record));
        }
        Ok(out)
    }

    /// How many records the table holds.
    pub fn count(&self, txn: &ReadTransaction) -> Result<u64, StoreError> {
        let table =
            txn.open_table(self.definition()).map_err(|e| StoreError::table(self.name, e))?;
        table.len().map_err(|e| StoreError::table(self.name, e))
    }

    /// Reads and decodes every record (a full check of the table); returns how many there are.
    pub fn decode_all(&self, txn: &ReadTransaction) -> Result<u64, StoreError> {
        let table =
            txn.open_table(self.definition()).map_err(|e| StoreError::table(self.name, e))?;
        let mut count = 0;
        for entry in table.iter().map_err(|e| StoreError::table(self.name, e))? {
            let (key, value) = entry.map_err(|e| StoreError::table(self.name, e))?;
            self.decode(key.value(), value.value())?;
            count += 1;
        }
        Ok(count)
    }

    /// Every record, inside a write transaction (for migrations that rewrite a table).
    pub fn all_for_update(&self, txn: &WriteTransaction) -> Result<Vec<(String, V)>, StoreError> {
        let table =
            txn.open_table(self.definition()).map_err(|e| StoreError::table(self.name, e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| StoreError::table(self.name, e))? {
            let (key, value) = entry.map_err(|e| StoreError::table(self.name, e))?;
            let key = key.value().to_owned();
            let record = self.decode(&key, value.value())?;
            out.push((key, record));
        }
        Ok(out)
    }

    fn get_in(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<V>, StoreError> {
        let Some(value) = table.get(key).map_err(|e| StoreError::table(self.name, e))? else {
            return Ok(None);
        };
        self.decode(key, value.value()).map(Some)
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<V, StoreError> {
        postcard::from_bytes(bytes).map_err(|source| StoreError::Decode {
            table: self.name,
            key: key.to_owned(),
            source,
        })
    }
}
