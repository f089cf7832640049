//! Named durable cursors, stored crash-safely in one double-buffered file.
//!
//! # Layout
//!
//! File `cursors`, two 4096-byte slots. A write goes to slot
//! `generation % 2` followed by fdatasync, so a torn write can only damage
//! the slot being written; the other still holds the previous state.
//!
//! ```text
//! slot: { u32 magic = "TNC1" | u16 version = 1 | u16 count | u64 generation
//!       | count * { u8 name_len | name[name_len] | u64 sequence }
//!       | zero padding
//!       | u32 crc = crc32(slot[0..4092]) }   (last 4 bytes of the slot)
//! ```
//!
//! On open the verifying slot with the highest generation wins. A cursor at
//! sequence `s` means "every record before `s` is passed" (delivered,
//! discarded, past its hold time...).

use std::collections::BTreeMap;

use crate::types::Sequence;

const CURSOR_MAGIC: u32 = 0x3143_4E54; // "TNC1"
const CURSOR_VERSION: u16 = 1;
/// Bytes of one slot.
pub const SLOT_BYTES: usize = 4096;
/// File name inside the log directory.
pub const CURSOR_FILE: &str = "cursors";

/// Cursor values at one generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Incremented by every write.
    pub generation: u64,
    /// Name to position.
    pub values: BTreeMap<String, Sequence>,
}

impl Snapshot {
    /// Slot index this snapshot is written to.
    pub fn slot(&self) -> u64 {
        self.generation % 2
    }

    /// Encodes one slot. Names and count are bounded by
    /// [`crate::config`] (32 names of 64 bytes fit easily).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SLOT_BYTES);
        out.extend_from_slice(&CURSOR_MAGIC.to_le_bytes());
        out.extend_from_slice(&CURSOR_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.values.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        for (name, seq) in &self.values {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&seq.0.to_le_bytes());
        }
        assert!(out.len() <= SLOT_BYTES - 4, "cursor slot overflow");
        out.resize(SLOT_BYTES - 4, 0);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a slot; `None` if it does not verify.
    pub fn decode(slot: &[u8]) -> Option<Snapshot> {
        if slot.len() != SLOT_BYTES {
            return None;
        }
        let crc = u32::from_le_bytes(slot[SLOT_BYTES - 4..].try_into().ok()?);
        if crc32fast::hash(&slot[..SLOT_BYTES - 4]) != crc
            || u32::from_le_bytes(slot[0..4].try_into().ok()?) != CURSOR_MAGIC
            || u16::from_le_bytes([slot[4], slot[5]]) != CURSOR_VERSION
        {
            return None;
        }
        let count = u16::from_le_bytes([slot[6], slot[7]]) as usize;
        let generation = u64::from_le_bytes(slot[8..16].try_into().ok()?);
        let mut values = BTreeMap::new();
        let mut at = 16;
        for _ in 0..count {
            let len = *slot.get(at)? as usize;
            let name = std::str::from_utf8(slot.get(at + 1..at + 1 + len)?).ok()?;
            let seq = u64::from_le_bytes(slot.get(at + 1 + len..at + 9 + len)?.try_into().ok()?);
            values.insert(name.to_owned(), Sequence(seq));
            at += 9 + len;
        }
        Some(Snapshot { generation, values })
    }
}

/// What the cursor file held.
#[derive(Debug, PartialEq, Eq)]
pub enum LoadedCursors {
    /// The newest verifying slot.
    Found(Snapshot),
    /// The file is absent or all zeros: no cursor was ever made durable.
    Empty,
    /// Neither slot verifies although the file has content.
    Corrupt,
}

/// Picks the newest verifying slot of a cursor file's bytes.
pub fn load(bytes: Option<&[u8]>) -> LoadedCursors {
    let Some(bytes) = bytes else {
        return LoadedCursors::Empty;
    };
    let best = bytes
        .chunks(SLOT_BYTES)
        .take(2)
        .filter_map(Snapshot::decode)
        .max_by_key(|s| s.generation);
    match best {
        Some(s) => LoadedCursors::Found(s),
        None if bytes.iter().all(|&b| b == 0) => LoadedCursors::Empty,
        None => LoadedCursors::Corrupt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(generation: u64, q: u64) -> Snapshot {
        let mut values = BTreeMap::new();
        values.insert("queue".to_string(), Sequence(q));
        values.insert("safety-net".to_string(), Sequence(1));
        Snapshot { generation, values }
    }

    #[test]
    fn round_trip_and_newest_wins() {
        let a = snap(4, 10);
        let b = snap(5, 20);
        assert_eq!(Snapshot::decode(&a.encode()), Some(a.clone()));
        let mut file = vec![0u8; 2 * SLOT_BYTES];
        file[..SLOT_BYTES].copy_from_slice(&a.encode());
        file[SLOT_BYTES..].copy_from_slice(&b.encode());
        assert_eq!(load(Some(&file)), LoadedCursors::Found(b));
        // Tear the newer slot: the older one is used.
        file[SLOT_BYTES + 20] ^= 0xff;
        assert_eq!(load(Some(&file)), LoadedCursors::Found(a));
        file[20] ^= 0xff;
        assert_eq!(load(Some(&file)), LoadedCursors::Corrupt);
        assert_eq!(load(Some(&[0u8; 8192])), LoadedCursors::Empty);
        assert_eq!(load(None), LoadedCursors::Empty);
    }
}
