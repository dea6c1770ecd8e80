//! The on-disk layout of one entry: a record under the cache key, plus an expiry-index key.
//!
//! ```text
//! record  (key = cache key bytes):
//!   [1: format = 1][8: expires_at ms, BE, 0 = never][8: seq, BE][4: CRC-32 of value, BE][value]
//! index   (key = 0xFF ++ [8: expires_at ms or u64::MAX, BE] ++ [8: seq, BE] ++ cache key bytes):
//!   [8: charged bytes, BE]
//! ```
//!
//! Cache keys are UTF-8, and no UTF-8 string starts with the byte 0xFF, so index keys sort
//! after every record and never collide with one. Index keys sort by expiry, then by `seq`
//! (the store order): a range scan from the start yields the expired entries first, and then
//! the eviction order (expires first, then stored first; entries without expiry last).
//!
//! The record carries its own expiry, so a read never decodes the envelope, and a CRC of the
//! value, so a damaged record is a miss whatever the value's format.

use bytes::Bytes;

/// First byte of every index key.
pub(crate) const INDEX_PREFIX: u8 = 0xFF;
const FORMAT: u8 = 1;
/// Length of the record header.
pub(crate) const HEADER_LEN: usize = 1 + 8 + 8 + 4;
const INDEX_HEAD_LEN: usize = 1 + 8 + 8;
/// Bytes charged per entry on top of its key (twice: record and index) and value.
pub(crate) const ENTRY_OVERHEAD: u64 = (HEADER_LEN + INDEX_HEAD_LEN + 8) as u64 + 32;

/// Bytes an entry counts against the size bound.
pub(crate) fn charged(key_len: usize, value_len: usize) -> u64 {
    2 * key_len as u64 + value_len as u64 + ENTRY_OVERHEAD
}

/// The metadata of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Expiry in Unix ms, `None`: never.
    pub(crate) expires_at: Option<u64>,
    /// Store order.
    pub(crate) seq: u64,
}

impl Meta {
    /// The index key of this record under `key`.
    pub(crate) fn index_key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(INDEX_HEAD_LEN + key.len());
        k.push(INDEX_PREFIX);
        k.extend_from_slice(&self.expires_at.unwrap_or(u64::MAX).to_be_bytes());
        k.extend_from_slice(&self.seq.to_be_bytes());
        k.extend_from_slice(key);
        k
    }

    /// Whether the record is expired at `now_ms`.
    pub(crate) fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|e| now_ms >= e)
    }
}

/// Encodes a record.
pub(crate) fn encode(meta: Meta, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + value.len());
    out.push(FORMAT);
    out.extend_from_slice(&meta.expires_at.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&meta.seq.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(value).to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Reads a record's metadata without checking the value (`None`: not a record of ours).
pub(crate) fn decode_meta(raw: &[u8]) -> Option<Meta> {
    if raw.len() < HEADER_LEN || raw[0] != FORMAT {
        return None;
    }
    let exp = u64_at(raw, 1);
    Some(Meta {
        expires_at: (exp != 0).then_some(exp),
        seq: u64_at(raw, 9),
    })
}

/// Why a stored record is unusable (it is then a miss and is removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Damage {
    /// Too short, or an unknown format byte.
    Header,
    /// The value's CRC does not match.
    Checksum,
}

/// Checks a record and returns its metadata and value (borrowed from `raw`, no copy).
pub(crate) fn decode(raw: Bytes) -> Result<(Meta, Bytes), Damage> {
    let meta = decode_meta(&raw).ok_or(Damage::Header)?;
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&raw[17..21]);
    let value = raw.slice(HEADER_LEN..);
    if crc32fast::hash(&value) != u32::from_be_bytes(crc) {
        return Err(Damage::Checksum);
    }
    Ok((meta, value))
}

/// An index entry, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    /// The record's metadata as the index knows it.
    pub(crate) meta: Meta,
    /// The cache key.
    pub(crate) key: Vec<u8>,
    /// Bytes charged for the entry.
    pub(crate) charged: u64,
}

/// Parses an index key and value (`None`: malformed).
pub(crate) fn decode_index(ikey: &[u8], ivalue: &[u8]) -> Option<IndexEntry> {
    if ikey.len() < INDEX_HEAD_LEN || ikey[0] != INDEX_PREFIX || ivalue.len() != 8 {
        return None;
    }
    let exp = u64_at(ikey, 1);
    Some(IndexEntry {
        meta: Meta {
            expires_at: (exp != u64::MAX).then_some(exp),
            seq: u64_at(ikey, 9),
        },
        key: ikey[INDEX_HEAD_LEN..].to_vec(),
        charged: u64_at(ivalue, 0),
    })
}

/// The index value: the charged bytes.
pub(crate) fn index_value(charged: u64) -> [u8; 8] {
    charged.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_damage() {
        let meta = Meta {
            expires_at: Some(1_795_000_000_000),
            seq: 42,
        };
        let raw = Bytes::from(encode(meta, b"hello"));
        let (m, v) = decode(raw.clone()).unwrap();
        assert_eq!(m, meta);
        assert_eq!(&v[..], b"hello");
        let never = Meta {
            expires_at: None,
            seq: 7,
        };
        assert_eq!(decode(Bytes::from(encode(never, b""))).unwrap().0, never);
        for cut in 0..HEADER_LEN {
            assert_eq!(decode(raw.slice(..cut)), Err(Damage::Header), "cut {cut}");
        }
        for i in 0..raw.len() {
            let mut bad = raw.to_vec();
            bad[i] ^= 0x10;
            match decode(Bytes::from(bad)) {
                Err(_) => {}
                // A flipped expiry or seq byte still decodes; the value must be intact.
                Ok((_, v)) => assert_eq!(&v[..], b"hello", "byte {i}"),
            }
        }
        assert_eq!(decode(raw.slice(..raw.len() - 1)), Err(Damage::Checksum));
    }

    #[test]
    fn index_orders_by_expiry_then_store_order() {
        let a = Meta {
            expires_at: Some(10),
            seq: 5,
        }
        .index_key(b"zzz");
        let b = Meta {
            expires_at: Some(11),
            seq: 1,
        }
        .index_key(b"aaa");
        let c = Meta {
            expires_at: None,
            seq: 0,
        }
        .index_key(b"aaa");
        let d = Meta {
            expires_at: None,
            seq: 1,
        }
        .index_key(b"");
        assert!(a < b && b < c && c < d);
        // Every index key sorts after every UTF-8 key.
        assert!("\u{10FFFF}".as_bytes() < &a[..]);
        let e = decode_index(&a, &index_value(99)).unwrap();
        assert_eq!(e.key, b"zzz");
        assert_eq!(e.meta.expires_at, Some(10));
        assert_eq!(e.charged, 99);
        let n = decode_index(&c, &index_value(1)).unwrap();
        assert_eq!(n.meta.expires_at, None);
        assert!(decode_index(b"\xff\x00", &index_value(1)).is_none());
        assert!(decode_index(&a, b"\x00").is_none());
    }
}
