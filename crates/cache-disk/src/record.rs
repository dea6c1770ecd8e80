//! The on-disk layout of one entry: a record under the cache key, plus an expiry-index key.
//!
//! ```text
//! record  (key = cache key bytes), a value of at most CHUNK_LEN bytes:
//!   [1: format = 1][8: expires_at ms, BE, 0 = never][8: seq, BE][4: CRC-32 of value, BE][value]
//! record  of a longer value, stored in chunks:
//!   [1: format = 2][8: expires_at][8: seq][4: CRC-32 of the whole value][4: chunks, BE][8: length, BE]
//! chunk   (key = 0xFE ++ [8: seq, BE] ++ [4: chunk number, BE]): CHUNK_LEN bytes of the value
//!   (the last one: the rest)
//! index   (key = 0xFF ++ [8: expires_at ms or u64::MAX, BE] ++ [8: seq, BE] ++ cache key bytes):
//!   [8: charged bytes, BE]
//! ```
//!
//! Why chunks: sled writes a tree node whose serialised form exceeds a quarter of its 512 KiB
//! segment as a separate blob file, rewrites the whole node on every change to it, and frees
//! the old versions only when the log segment pointing to them is cleaned, which the tiny
//! pointers rarely trigger. With values of 64–256 KiB the directory grew to 10 × the size
//! bound and kept growing. A leaf holds at most 17 items, so with items of at most
//! [`CHUNK_LEN`] no node reaches the blob threshold, and the footprint of large values is that
//! of small ones (docs/reliability.md).
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
/// First byte of every chunk key (sorts after every cache key, before the index).
pub(crate) const CHUNK_PREFIX: u8 = 0xFE;
/// The longest value stored inline, and the length of a chunk.
pub(crate) const CHUNK_LEN: usize = 6 << 10;
const FORMAT: u8 = 1;
const FORMAT_CHUNKED: u8 = 2;
const CHUNKED_LEN: usize = HEADER_LEN + 4 + 8;
const CHUNK_KEY_LEN: usize = 1 + 8 + 4;
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

/// Encodes a record: the value inline if it is at most [`CHUNK_LEN`] bytes, else a header
/// naming its chunks (stored apart, see [`chunks`]).
pub(crate) fn encode(meta: Meta, value: &[u8]) -> Vec<u8> {
    let chunked = value.len() > CHUNK_LEN;
    let mut out = Vec::with_capacity(if chunked {
        CHUNKED_LEN
    } else {
        HEADER_LEN + value.len()
    });
    out.push(if chunked { FORMAT_CHUNKED } else { FORMAT });
    out.extend_from_slice(&meta.expires_at.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&meta.seq.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(value).to_be_bytes());
    if chunked {
        let n = value.len().div_ceil(CHUNK_LEN) as u32;
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&(value.len() as u64).to_be_bytes());
    } else {
        out.extend_from_slice(value);
    }
    out
}

/// The chunks of a value longer than [`CHUNK_LEN`] stored under `seq`: (key, bytes) pairs.
pub(crate) fn chunks(seq: u64, value: &[u8]) -> impl Iterator<Item = (Vec<u8>, &[u8])> {
    value
        .chunks(CHUNK_LEN)
        .enumerate()
        .map(move |(i, c)| (chunk_key(seq, i as u32), c))
}

/// The key of chunk `i` of the value stored under `seq`.
pub(crate) fn chunk_key(seq: u64, i: u32) -> Vec<u8> {
    let mut k = chunk_prefix(seq);
    k.extend_from_slice(&i.to_be_bytes());
    k
}

/// The prefix of every chunk key of the value stored under `seq`.
pub(crate) fn chunk_prefix(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(CHUNK_KEY_LEN);
    k.push(CHUNK_PREFIX);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The `seq` a chunk key belongs to (`None`: not a chunk key).
pub(crate) fn chunk_seq(key: &[u8]) -> Option<u64> {
    (key.len() == CHUNK_KEY_LEN && key[0] == CHUNK_PREFIX).then(|| u64_at(key, 1))
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[at..at + 8]);
    u64::from_be_bytes(b)
}

/// Reads a record's metadata without checking the value (`None`: not a record of ours).
pub(crate) fn decode_meta(raw: &[u8]) -> Option<Meta> {
    let ok = match raw.first() {
        Some(&FORMAT) => raw.len() >= HEADER_LEN,
        Some(&FORMAT_CHUNKED) => raw.len() == CHUNKED_LEN,
        _ => false,
    };
    if !ok {
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
    /// A chunk is missing, out of place or of the wrong length.
    Chunks,
}

/// A record's value, as the record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stored {
    /// The value itself, checked (borrowed from the record, no copy).
    Inline(Bytes),
    /// The value is in `count` chunks under the record's `seq`; check it with [`assemble`].
    Chunked { count: u32, len: u64, crc: u32 },
}

/// Checks a record and returns its metadata and value.
pub(crate) fn decode(raw: Bytes) -> Result<(Meta, Stored), Damage> {
    let meta = decode_meta(&raw).ok_or(Damage::Header)?;
    let crc = u32::from_be_bytes([raw[17], raw[18], raw[19], raw[20]]);
    if raw[0] == FORMAT_CHUNKED {
        let count = u32::from_be_bytes([raw[21], raw[22], raw[23], raw[24]]);
        let len = u64_at(&raw, 25);
        let expected = len.div_ceil(CHUNK_LEN as u64);
        if len <= CHUNK_LEN as u64 || u64::from(count) != expected {
            return Err(Damage::Header);
        }
        return Ok((meta, Stored::Chunked { count, len, crc }));
    }
    let value = raw.slice(HEADER_LEN..);
    if crc32fast::hash(&value) != crc {
        return Err(Damage::Checksum);
    }
    Ok((meta, Stored::Inline(value)))
}

/// Joins the chunks (keys and bytes, in key order) of a chunked value and checks them against
/// its record.
pub(crate) fn assemble(
    seq: u64,
    count: u32,
    len: u64,
    crc: u32,
    chunks: &[(impl AsRef<[u8]>, impl AsRef<[u8]>)],
) -> Result<Bytes, Damage> {
    if chunks.len() != count as usize {
        return Err(Damage::Chunks);
    }
    let mut value = Vec::with_capacity(usize::try_from(len).map_err(|_| Damage::Chunks)?);
    for (i, (k, v)) in chunks.iter().enumerate() {
        let (k, v) = (k.as_ref(), v.as_ref());
        let want = if i + 1 == chunks.len() {
            len as usize - CHUNK_LEN * i
        } else {
            CHUNK_LEN
        };
        if k != chunk_key(seq, i as u32) || v.len() != want {
            return Err(Damage::Chunks);
        }
        value.extend_from_slice(v);
    }
    if crc32fast::hash(&value) != crc {
        return Err(Damage::Checksum);
    }
    Ok(Bytes::from(value))
}

/// For a record holding a chunked value: its chunk count (`None`: inline, or not ours).
pub(crate) fn chunk_count(raw: &[u8]) -> Option<u32> {
    (raw.len() == CHUNKED_LEN && raw[0] == FORMAT_CHUNKED)
        .then(|| u32::from_be_bytes([raw[21], raw[22], raw[23], raw[24]]))
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
        assert_eq!(v, Stored::Inline(Bytes::from_static(b"hello")));
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
                Ok((_, v)) => {
                    assert_eq!(v, Stored::Inline(Bytes::from_static(b"hello")), "byte {i}")
                }
            }
        }
        assert_eq!(decode(raw.slice(..raw.len() - 1)), Err(Damage::Checksum));
    }

    #[test]
    fn long_values_are_chunked_and_checked() {
        let meta = Meta {
            expires_at: None,
            seq: 9,
        };
        assert!(matches!(
            decode(Bytes::from(encode(meta, &[7; CHUNK_LEN])))
                .unwrap()
                .1,
            Stored::Inline(_)
        ));
        let value: Vec<u8> = (0..2 * CHUNK_LEN + 5).map(|i| (i % 251) as u8).collect();
        let raw = encode(meta, &value);
        assert_eq!(raw.len(), CHUNKED_LEN);
        assert_eq!(chunk_count(&raw), Some(3));
        let (m, stored) = decode(Bytes::from(raw.clone())).unwrap();
        assert_eq!(m, meta);
        let Stored::Chunked { count, len, crc } = stored else {
            panic!("{stored:?}")
        };
        let parts: Vec<(Vec<u8>, Vec<u8>)> =
            chunks(9, &value).map(|(k, v)| (k, v.to_vec())).collect();
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|(k, _)| chunk_seq(k) == Some(9)));
        assert!(parts.windows(2).all(|w| w[0].0 < w[1].0), "key order");
        assert!(parts[0].0.starts_with(&chunk_prefix(9)));
        assert!(chunk_prefix(9) < chunk_prefix(10) && chunk_prefix(u64::MAX)[0] < INDEX_PREFIX);
        assert_eq!(
            assemble(9, count, len, crc, &parts).unwrap(),
            Bytes::from(value.clone())
        );
        // A missing, misplaced, short or altered chunk is damage.
        assert_eq!(
            assemble(9, count, len, crc, &parts[..2]),
            Err(Damage::Chunks)
        );
        assert_eq!(assemble(8, count, len, crc, &parts), Err(Damage::Chunks));
        let mut short = parts.clone();
        short[1].1.pop();
        assert_eq!(assemble(9, count, len, crc, &short), Err(Damage::Chunks));
        let mut flipped = parts.clone();
        flipped[2].1[0] ^= 1;
        assert_eq!(
            assemble(9, count, len, crc, &flipped),
            Err(Damage::Checksum)
        );
        // A chunked header that does not add up is damage.
        let mut bad = raw.clone();
        bad[24] = 9;
        assert_eq!(decode(Bytes::from(bad)), Err(Damage::Header));
        assert_eq!(
            decode(Bytes::from(raw[..raw.len() - 1].to_vec())),
            Err(Damage::Header)
        );
        assert_eq!(chunk_seq(b"\xfe\x00"), None);
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
