//! The compact (binary) envelope: what backends store when [`Encoding::compact`] is on.
//!
//! ```text
//! magic "\0LC2"
//! header:  kind_len kind flags codec format stored_at [expires_at] [usage ×3] [upstream_ms]
//!          body_len inner_len stored_len body_crc            (integers: LEB128 varints)
//! header_crc (u32 LE, CRC-32 of magic + header)
//! payload (stored_len bytes, to the end)
//! ```
//!
//! * `codec`: 0 the payload as is, 1 zstd, 2 zstd with the built-in dictionary v1
//!   (`dict-v1.txt`: the JSON skeletons of OpenAI, Anthropic and Responses answers), 3 zstd with
//!   dictionary v2 (`dict-v2.bin`: v1's content with Huffman and FSE tables, so a short answer's
//!   frame need not carry and build its own: made by `bench/dict_experiment.py`). A
//!   dictionary's bytes never change: a new dictionary is a new codec. New entries use 3;
//!   entries of 2 stay readable.
//! * `format`: 0 the body's own text, 1 packed floats ([`super::floats`]).
//! * `body_crc` is the CRC-32 of the body as served, checked after decoding; `header_crc`
//!   covers every header field, so a damaged length cannot make a decoder allocate wildly.
//!
//! Decoding never panics and allocates at most `inner_len` + `body_len` bytes, each bounded by
//! [`MAX_BODY`]; every failure is a [`DecodeError`], a miss.

use std::cell::RefCell;
use std::sync::OnceLock;

use bytes::Bytes;

use super::floats;
use super::varint::{Reader, put_varint};
use super::{DecodeError, Encoding, Entry, Usage};
use crate::key::CallKind;

pub(super) const MAGIC: &[u8; 4] = b"\0LC2";

/// The largest body a compact envelope may announce (Redis' own value limit).
const MAX_BODY: usize = 512 << 20;

const CODEC_NONE: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const CODEC_ZSTD_DICT1: u8 = 2;
const CODEC_ZSTD_DICT2: u8 = 3;
const FORMAT_TEXT: u8 = 0;
const FORMAT_PACKED_FLOATS: u8 = 1;

const FLAG_EXPIRES: u8 = 1;
const FLAG_USAGE: u8 = 2;
const FLAG_UPSTREAM: u8 = 4;

/// zstd level: 6 is 4-6 % smaller than 3 on LLM answers (measured with the bytes bench's
/// answers) and still compresses a 2 KB answer in microseconds; higher levels gain < 2 %.
const LEVEL: i32 = 6;

const DICT_V1: &[u8] = include_bytes!("dict-v1.txt");
const DICT_V2: &[u8] = include_bytes!("dict-v2.bin");

/// The codec new entries are compressed with.
const CODEC_DICT: u8 = CODEC_ZSTD_DICT2;

fn encoder_dict(codec: u8) -> &'static zstd::dict::EncoderDictionary<'static> {
    static V1: OnceLock<zstd::dict::EncoderDictionary<'static>> = OnceLock::new();
    static V2: OnceLock<zstd::dict::EncoderDictionary<'static>> = OnceLock::new();
    match codec {
        CODEC_ZSTD_DICT1 => V1.get_or_init(|| zstd::dict::EncoderDictionary::copy(DICT_V1, LEVEL)),
        _ => V2.get_or_init(|| zstd::dict::EncoderDictionary::copy(DICT_V2, LEVEL)),
    }
}

fn decoder_dict(codec: u8) -> &'static zstd::dict::DecoderDictionary<'static> {
    static V1: OnceLock<zstd::dict::DecoderDictionary<'static>> = OnceLock::new();
    static V2: OnceLock<zstd::dict::DecoderDictionary<'static>> = OnceLock::new();
    match codec {
        CODEC_ZSTD_DICT1 => V1.get_or_init(|| zstd::dict::DecoderDictionary::copy(DICT_V1)),
        _ => V2.get_or_init(|| zstd::dict::DecoderDictionary::copy(DICT_V2)),
    }
}

thread_local! {
    // One compression and one decompression context per thread (creating one costs more
    // than compressing a typical answer).
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR_V1: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static PLAIN_DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(data: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        if c.is_none() {
            *c = Some(dict_compressor(CODEC_DICT)?);
        }
        c.as_mut()?.compress(data).ok()
    })
}

/// A compressor with the dictionary of `codec` (2 or 3).
fn dict_compressor(codec: u8) -> Option<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::CParameter;
    let mut new = zstd::bulk::Compressor::with_prepared_dictionary(encoder_dict(codec)).ok()?;
    // The envelope records lengths and a checksum of its own: no need to repeat them in every
    // frame (up to 12 bytes on a short answer).
    new.set_parameter(CParameter::ContentSizeFlag(false)).ok()?;
    new.set_parameter(CParameter::ChecksumFlag(false)).ok()?;
    new.set_parameter(CParameter::DictIdFlag(false)).ok()?;
    Some(new)
}

/// zstd without the dictionary (the float planes).
pub(super) fn compress_plain(data: &[u8]) -> Option<Vec<u8>> {
    thread_local! {
        static PLAIN: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    }
    PLAIN.with(|c| {
        let mut c = c.try_borrow_mut().ok()?;
        if c.is_none() {
            use zstd::zstd_safe::CParameter;
            let mut new = zstd::bulk::Compressor::new(LEVEL).ok()?;
            new.set_parameter(CParameter::ContentSizeFlag(false)).ok()?;
            new.set_parameter(CParameter::ChecksumFlag(false)).ok()?;
            *c = Some(new);
        }
        c.as_mut()?.compress(data).ok()
    })
}

/// Inverse of [`compress_plain`]: exactly `len` bytes or `None`.
pub(super) fn decompress_plain(data: &[u8], len: usize) -> Option<Vec<u8>> {
    decompress(CODEC_ZSTD, data, len)
}

fn decompress(codec: u8, data: &[u8], capacity: usize) -> Option<Vec<u8>> {
    let cell = match codec {
        CODEC_ZSTD_DICT2 => &DECOMPRESSOR,
        CODEC_ZSTD_DICT1 => &DECOMPRESSOR_V1,
        CODEC_ZSTD => &PLAIN_DECOMPRESSOR,
        _ => return None,
    };
    cell.with(|d| {
        let mut d = d.try_borrow_mut().ok()?;
        if d.is_none() {
            *d = Some(match codec {
                CODEC_ZSTD => zstd::bulk::Decompressor::new().ok()?,
                dict => {
                    zstd::bulk::Decompressor::with_prepared_dictionary(decoder_dict(dict)).ok()?
                }
            });
        }
        let out = d.as_mut()?.decompress(data, capacity).ok()?;
        (out.len() == capacity).then_some(out)
    })
}

/// Encodes `entry` compactly (see the module docs).
pub(super) fn encode(entry: &Entry, enc: &Encoding) -> Bytes {
    encode_as(entry, enc, CODEC_DICT)
}

/// [`encode`], compressing with the dictionary of `dict_codec` (2 or 3).
fn encode_as(entry: &Entry, enc: &Encoding, dict_codec: u8) -> Bytes {
    let body = &entry.body[..];
    let (format, inner) = match enc.pack_floats.then(|| floats::pack(body)).flatten() {
        Some(packed) => (FORMAT_PACKED_FLOATS, std::borrow::Cow::Owned(packed)),
        None => (FORMAT_TEXT, std::borrow::Cow::Borrowed(body)),
    };
    let compressed = (enc.compress && inner.len() >= enc.compress_min_bytes)
        .then(|| {
            if dict_codec == CODEC_DICT {
                compress(&inner)
            } else {
                dict_compressor(dict_codec)?.compress(&inner).ok()
            }
        })
        .flatten()
        // Worth it only when it saves something.
        .filter(|c| c.len() + 8 < inner.len());
    let (codec, payload): (u8, &[u8]) = match &compressed {
        Some(c) => (dict_codec, c),
        None => (CODEC_NONE, &inner),
    };
    let kind = entry.kind.as_str().as_bytes();
    let mut out = Vec::with_capacity(payload.len() + 64);
    out.extend_from_slice(MAGIC);
    out.push(kind.len() as u8);
    out.extend_from_slice(kind);
    let mut flags = 0;
    if entry.expires_at_ms.is_some() {
        flags |= FLAG_EXPIRES;
    }
    if entry.usage.is_some() {
        flags |= FLAG_USAGE;
    }
    if entry.upstream_ms.is_some() {
        flags |= FLAG_UPSTREAM;
    }
    out.push(flags);
    out.push(codec);
    out.push(format);
    put_varint(&mut out, entry.stored_at_ms);
    if let Some(e) = entry.expires_at_ms {
        put_varint(&mut out, e);
    }
    if let Some(u) = &entry.usage {
        put_varint(&mut out, u.prompt_tokens);
        put_varint(&mut out, u.completion_tokens);
        put_varint(&mut out, u.total_tokens);
    }
    if let Some(ms) = entry.upstream_ms {
        put_varint(&mut out, ms);
    }
    put_varint(&mut out, body.len() as u64);
    put_varint(&mut out, inner.len() as u64);
    put_varint(&mut out, payload.len() as u64);
    put_varint(&mut out, u64::from(crc32fast::hash(body)));
    let header_crc = crc32fast::hash(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Decodes a compact envelope (`raw` starts with [`MAGIC`]).
pub(super) fn decode(raw: &Bytes) -> Result<Entry, DecodeError> {
    let bad = |what: &str| DecodeError::Header(what.to_owned());
    let mut r = Reader::new(&raw[MAGIC.len()..]);
    let kind_len = r.u8().ok_or_else(|| bad("truncated"))?;
    let kind = r
        .bytes(usize::from(kind_len))
        .ok_or_else(|| bad("truncated"))?;
    let flags = r.u8().ok_or_else(|| bad("truncated"))?;
    let codec = r.u8().ok_or_else(|| bad("truncated"))?;
    let format = r.u8().ok_or_else(|| bad("truncated"))?;
    let mut next = || r.varint().ok_or_else(|| bad("truncated"));
    let stored_at = next()?;
    let expires_at = if flags & FLAG_EXPIRES != 0 {
        Some(next()?)
    } else {
        None
    };
    let usage = if flags & FLAG_USAGE != 0 {
        Some(Usage {
            prompt_tokens: next()?,
            completion_tokens: next()?,
            total_tokens: next()?,
        })
    } else {
        None
    };
    let upstream_ms = if flags & FLAG_UPSTREAM != 0 {
        Some(next()?)
    } else {
        None
    };
    let body_len = next()?;
    let inner_len = next()?;
    let stored_len = next()?;
    let crc = next()?;
    let header_end = raw.len() - r.rest().len();
    let header_crc = r.bytes(4).ok_or_else(|| bad("truncated"))?;
    if crc32fast::hash(&raw[..header_end]).to_le_bytes() != header_crc {
        return Err(DecodeError::Corrupt);
    }
    let too_big = |n: u64| usize::try_from(n).ok().filter(|&n| n <= MAX_BODY);
    let (Some(body_len), Some(inner_len), Some(stored_len)) =
        (too_big(body_len), too_big(inner_len), too_big(stored_len))
    else {
        return Err(bad("length out of range"));
    };
    let payload_start = raw.len() - r.rest().len();
    let actual = raw.len() - payload_start;
    if actual != stored_len {
        return Err(DecodeError::Truncated {
            expected: stored_len,
            actual,
        });
    }
    let kind = std::str::from_utf8(kind)
        .ok()
        .and_then(CallKind::parse)
        .ok_or_else(|| bad("unknown kind"))?;
    let payload = raw.slice(payload_start..);
    let inner = match codec {
        CODEC_NONE if stored_len == inner_len => payload,
        CODEC_ZSTD | CODEC_ZSTD_DICT1 | CODEC_ZSTD_DICT2 => {
            Bytes::from(decompress(codec, &payload, inner_len).ok_or(DecodeError::Corrupt)?)
        }
        _ => return Err(bad("unknown codec")),
    };
    let body = match format {
        FORMAT_TEXT if inner.len() == body_len => inner,
        FORMAT_PACKED_FLOATS => {
            Bytes::from(floats::unpack(&inner, body_len).ok_or(DecodeError::Corrupt)?)
        }
        _ => return Err(bad("unknown format")),
    };
    if u64::from(crc32fast::hash(&body)) != crc {
        return Err(DecodeError::Corrupt);
    }
    Ok(Entry {
        kind,
        stored_at_ms: stored_at,
        expires_at_ms: expires_at,
        usage,
        upstream_ms,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static [u8]) -> Entry {
        Entry {
            kind: CallKind::Chat,
            stored_at_ms: 1_795_000_000_000,
            expires_at_ms: Some(1_795_000_600_000),
            usage: Some(Usage {
                prompt_tokens: 42,
                completion_tokens: 9,
                total_tokens: 51,
            }),
            upstream_ms: Some(812),
            body: Bytes::from_static(body),
        }
    }

    const ANSWER: &[u8] = br#"{"id":"chatcmpl-AbC123","object":"chat.completion","created":1795000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"The cache answers a repeated request from memory instead of calling the model again, which saves time and money.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":9,"total_tokens":51}}"#;

    fn unhex(s: &str) -> Bytes {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    #[test]
    fn new_entries_use_dictionary_v2_and_v1_entries_stay_readable() {
        let e = entry(ANSWER);
        let v2 = encode(&e, &Encoding::COMPACT);
        let v1 = encode_as(&e, &Encoding::COMPACT, CODEC_ZSTD_DICT1);
        let codec = |raw: &[u8]| raw[MAGIC.len() + 1 + e.kind.as_str().len() + 1];
        assert_eq!(codec(&v2), CODEC_ZSTD_DICT2);
        assert_eq!(codec(&v1), CODEC_ZSTD_DICT1);
        assert_eq!(decode(&v2).unwrap(), e);
        assert_eq!(decode(&v1).unwrap(), e);
        // The tables spare a short answer's frame its own.
        assert!(
            v2.len() < v1.len(),
            "v2 {} bytes, v1 {}",
            v2.len(),
            v1.len()
        );
    }

    /// Entries written today must read back tomorrow: these bytes were written by this code on
    /// 2026-12-01, one with each dictionary. A change to either dictionary's bytes fails here.
    #[test]
    fn stored_entries_of_both_dictionaries_decode() {
        for golden in [GOLDEN_V1, GOLDEN_V2] {
            let raw = unhex(golden);
            assert_eq!(decode(&raw).unwrap(), entry(ANSWER), "{golden}");
        }
    }

    const GOLDEN_V1: &str = concat!(
        "004c4332046368617407020080bcd9f29e34c08bfef29e342a0933ac06a903a9038d01f7d4bea10b",
        "060a75f928b52ffd0000250400d204121a70376ed03184c8b45b574d93a6d069749dbf01f3eba3aa",
        "fffb02ef95830c52b85ca64fbada3b0dd8bb50e1d5ae8479c74c53af8c076fcd2f24731e7af14f42",
        "80300e3a4c01089212000011f6e40f8b7a32f987d7f186fb5299051ae4e034001a608763c3aba155",
        "ce8335c66b871eb736d508dac6821370ed2047868a0d240301",
    );
    const GOLDEN_V2: &str = concat!(
        "004c4332046368617407030080bcd9f29e34c08bfef29e342a0933ac06a903a90372f7d4bea10bea",
        "c4968f28b52ffd00004d0300d3040da351f5c1c168a68e69d51e3579df1c7a4de5fbbc7fa88c8fdf",
        "d9aab176ad5aecb7ed37b696454ddfcf998a85fae0643015c9351212fc8c883d8700a21e393e37f2",
        "864d254a83500df0b303dc7e3502e75d31caa1476bd4ff6d63a17ce057c831146c8c989218",
    );
}
