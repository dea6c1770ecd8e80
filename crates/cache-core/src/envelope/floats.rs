//! Packed floats: the `"embedding": [...]` arrays of a response stored as binary floats, so an
//! embedding costs 4 bytes per dimension instead of ~20 characters of text.
//!
//! The transform is exact or not done: every number of an array must print back to its exact
//! original text in one of the known styles (see [`Style`]), the separators between numbers must
//! all be the same, and the whole body is rebuilt and compared with the original before the
//! packed form is used. Anything else (integers, mixed formats, odd whitespace, nested arrays)
//! stays text. A hit therefore returns the upstream's bytes, byte for byte, whichever form was
//! stored.
//!
//! Packed layout (all integers LEB128 varints, floats little endian):
//!
//! ```text
//! skeleton_len skeleton            the body with each packed array's interior cut out
//! arrays
//! per array: offset style width n sep_len sep lead_len lead trail_len trail
//!            low byte planes, top plane (0 raw | 1 len zstd)
//!            n_exceptions (index style f64)...   numbers the array's style does not print back
//! ```

use super::varint::{Reader, put_varint};

/// How a number prints. Each style is an exact inverse of the parse for the values it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Style {
    /// Shortest round-trip text of an f64 (ryu, what serde_json and JavaScript-like encoders
    /// write): `-0.006929283495992422`, `1e-7`.
    Ryu64 = 0,
    /// Python's `repr(float)` (what `json.dumps` writes): `1e-07`, `1.5e+16`.
    Python = 1,
    /// Shortest round-trip text of an f32: `-0.0069292835`.
    Ryu32 = 2,
}

impl Style {
    fn from_u8(b: u8) -> Option<Style> {
        match b {
            0 => Some(Style::Ryu64),
            1 => Some(Style::Python),
            2 => Some(Style::Ryu32),
            _ => None,
        }
    }
}

const STYLES: [Style; 3] = [Style::Ryu32, Style::Ryu64, Style::Python];

/// Python's `repr` of a finite f64, from ryu's shortest digits.
fn python_repr(v: f64, out: &mut String) {
    let mut buf = ryu::Buffer::new();
    let s = buf.format_finite(v);
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    // Digits and the decimal exponent of the first digit: value = 0.d1d2... × 10^point.
    let (mantissa, exp) = match s.split_once('e') {
        Some((m, e)) => (m, e.parse::<i32>().unwrap_or(0)),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int}{frac}");
    let mut point = int.len() as i32 + exp;
    let lead = digits.len() - digits.trim_start_matches('0').len();
    digits.drain(..lead);
    point -= lead as i32;
    let trimmed = digits.trim_end_matches('0').len();
    digits.truncate(trimmed);
    if neg {
        out.push('-');
    }
    if digits.is_empty() {
        out.push_str("0.0");
        return;
    }
    let e10 = point - 1; // exponent of scientific notation
    if (-4..16).contains(&e10) {
        if point <= 0 {
            out.push_str("0.");
            for _ in 0..-point {
                out.push('0');
            }
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            for _ in 0..(point as usize - digits.len()) {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if e10 < 0 { '-' } else { '+' });
        let a = e10.unsigned_abs();
        if a < 10 {
            out.push('0');
        }
        out.push_str(&a.to_string());
    }
}

/// The value of `token` if `style` prints it back exactly.
fn exact(style: Style, token: &str, scratch: &mut String) -> Option<f64> {
    let v: f64 = match style {
        Style::Ryu32 => f64::from(token.parse::<f32>().ok()?),
        _ => token.parse::<f64>().ok()?,
    };
    if !v.is_finite() {
        return None;
    }
    let same = match style {
        Style::Ryu64 => ryu::Buffer::new().format_finite(v) == token,
        Style::Ryu32 => ryu::Buffer::new().format_finite(v as f32) == token,
        Style::Python => {
            scratch.clear();
            python_repr(v, scratch);
            scratch == token
        }
    };
    same.then_some(v)
}

struct Array<'a> {
    /// Byte offset of the interior (just after `[`) in the body.
    start: usize,
    /// Byte offset of the closing `]`.
    end: usize,
    style: Style,
    wide: bool,
    sep: &'a str,
    lead: &'a str,
    trail: &'a str,
    /// The values in the array's style (an exception's slot holds 0).
    values: Vec<f64>,
    /// Numbers the array's style does not print back, each in a style that does:
    /// (index, style, value), stored as f64.
    exceptions: Vec<(usize, Style, f64)>,
}

/// Splits an array interior into numbers; `None` unless it is a non-empty list of numbers with
/// one separator.
fn parse_interior(interior: &str) -> Option<(Vec<&str>, &str, &str, &str)> {
    let lead_len = interior.len() - interior.trim_start().len();
    let trail_len = interior.len() - interior.trim_end().len();
    if lead_len + trail_len >= interior.len() {
        return None;
    }
    let lead = &interior[..lead_len];
    let trail = &interior[interior.len() - trail_len..];
    let body = &interior[lead_len..interior.len() - trail_len];
    let is_num = |c: u8| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E');
    let bytes = body.as_bytes();
    let first_end = bytes
        .iter()
        .position(|&c| !is_num(c))
        .unwrap_or(bytes.len());
    let sep_end = first_end
        + bytes[first_end..]
            .iter()
            .position(|&c| is_num(c))
            .unwrap_or(bytes.len() - first_end);
    let sep = &body[first_end..sep_end];
    let tokens: Vec<&str> = if sep.is_empty() {
        vec![body]
    } else {
        if sep.trim() != "," {
            return None;
        }
        body.split(sep).collect()
    };
    if tokens
        .iter()
        .any(|t| t.is_empty() || !t.bytes().all(is_num))
    {
        return None;
    }
    Some((tokens, sep, lead, trail))
}

fn pack_array<'a>(body: &'a str, start: usize, end: usize) -> Option<Array<'a>> {
    let (tokens, sep, lead, trail) = parse_interior(&body[start..end])?;
    let mut scratch = String::new();
    // The array's style: the one that prints most of its first numbers back (f32 first, the
    // narrowest, on a tie). Two float printers can pick different shortest texts for one
    // float32 (ties in the last digit): such numbers become exceptions, kept as f64 in a
    // style that prints them back.
    let sample = &tokens[..tokens.len().min(32)];
    // The style that makes the array smallest on a sample: 4 or 8 bytes per number it prints
    // back, ~11 bytes per exception.
    let mut style = None;
    let mut best = usize::MAX;
    for &candidate in &STYLES {
        let mut cost = 0usize;
        let mut narrow = true;
        for t in sample {
            match exact(candidate, t, &mut scratch) {
                Some(v) => narrow &= candidate == Style::Ryu32 || f64::from(v as f32) == v,
                None => cost += 11,
            }
        }
        let hits = sample.len() - cost / 11;
        cost += hits * if narrow { 4 } else { 8 };
        if hits > 0 && cost < best {
            (style, best) = (Some(candidate), cost);
        }
    }
    let style = style?;
    let mut values = Vec::with_capacity(tokens.len());
    let mut exceptions = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match exact(style, t, &mut scratch) {
            Some(v) => values.push(v),
            None => {
                let (alt, v) = STYLES
                    .iter()
                    .filter(|&&s| s != style)
                    .find_map(|&s| exact(s, t, &mut scratch).map(|v| (s, v)))?;
                exceptions.push((i, alt, v));
                values.push(0.0);
            }
        }
    }
    // Mostly exceptions: not worth packing.
    if exceptions.len() * 8 > tokens.len() {
        return None;
    }
    let wide = style != Style::Ryu32 && values.iter().any(|&v| f64::from(v as f32) != v);
    Some(Array {
        start,
        end,
        style,
        wide,
        sep,
        lead,
        trail,
        values,
        exceptions,
    })
}

/// Finds the `"embedding": [ ... ]` arrays of numbers in a JSON text (a scanner that skips
/// strings; the rebuild check catches anything it gets wrong).
fn find_arrays(body: &str) -> Vec<Array<'_>> {
    let b = body.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        // A string: find its end.
        let start = i + 1;
        let mut j = start;
        while j < b.len() && b[j] != b'"' {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        if j >= b.len() {
            break;
        }
        let name = &b[start..j];
        i = j + 1;
        if name != b"embedding" {
            continue;
        }
        let mut k = i;
        while k < b.len() && b[k].is_ascii_whitespace() {
            k += 1;
        }
        if k >= b.len() || b[k] != b':' {
            continue;
        }
        k += 1;
        while k < b.len() && b[k].is_ascii_whitespace() {
            k += 1;
        }
        if k >= b.len() || b[k] != b'[' {
            continue;
        }
        let open = k + 1;
        let Some(close) = b[open..].iter().position(|&c| c == b']').map(|p| open + p) else {
            break;
        };
        if let Some(a) = pack_array(body, open, close) {
            out.push(a);
        }
        i = close + 1;
    }
    out
}

/// The packed form of `body`, if it has packable arrays and rebuilds to exactly `body`.
pub(super) fn pack(body: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let arrays = find_arrays(text);
    if arrays.is_empty() {
        return None;
    }
    let mut skeleton = Vec::with_capacity(body.len() / 4);
    let mut offsets = Vec::with_capacity(arrays.len());
    let mut last = 0;
    for a in &arrays {
        skeleton.extend_from_slice(&body[last..a.start]);
        offsets.push(skeleton.len());
        last = a.end;
    }
    skeleton.extend_from_slice(&body[last..]);
    let floats: usize = arrays
        .iter()
        .map(|a| a.values.len() * if a.wide { 8 } else { 4 })
        .sum();
    let mut out = Vec::with_capacity(skeleton.len() + floats + 16 * arrays.len() + 8);
    put_varint(&mut out, skeleton.len() as u64);
    out.extend_from_slice(&skeleton);
    put_varint(&mut out, arrays.len() as u64);
    for (a, off) in arrays.iter().zip(offsets) {
        put_varint(&mut out, off as u64);
        out.push(a.style as u8);
        out.push(if a.wide { 8 } else { 4 });
        put_varint(&mut out, a.values.len() as u64);
        for s in [a.sep, a.lead, a.trail] {
            put_varint(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        // Byte planes (every value's first byte, then every second byte, ...): the sign and
        // exponent bytes of an embedding vary little, which the compressor then sees.
        let width = if a.wide { 8 } else { 4 };
        let mut raw = Vec::with_capacity(a.values.len() * width);
        for &v in &a.values {
            if a.wide {
                raw.extend_from_slice(&v.to_le_bytes());
            } else {
                raw.extend_from_slice(&(v as f32).to_le_bytes());
            }
        }
        for b in 0..width - 1 {
            out.extend(raw.iter().skip(b).step_by(width));
        }
        // The top plane (sign and exponent) on its own, compressed when that pays: in one
        // frame with the others it shares a Huffman table with random mantissa bytes and
        // gains nothing (measured: 1,536 bytes of a 1536-float embedding become ~675 alone).
        let top: Vec<u8> = raw.iter().skip(width - 1).step_by(width).copied().collect();
        match super::compact::compress_plain(&top).filter(|c| c.len() + 4 < top.len()) {
            Some(c) => {
                out.push(1);
                put_varint(&mut out, c.len() as u64);
                out.extend_from_slice(&c);
            }
            None => {
                out.push(0);
                out.extend_from_slice(&top);
            }
        }
        put_varint(&mut out, a.exceptions.len() as u64);
        for &(i, style, v) in &a.exceptions {
            put_varint(&mut out, i as u64);
            out.push(style as u8);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    if out.len() >= body.len() {
        return None;
    }
    // Exact or nothing.
    (unpack(&out, body.len()).as_deref() == Some(body)).then_some(out)
}

/// Rebuilds the body from its packed form; `None` if `packed` is malformed or the result is
/// not `expected_len` bytes. Never panics.
pub(super) fn unpack(packed: &[u8], expected_len: usize) -> Option<Vec<u8>> {
    let mut r = Reader::new(packed);
    let skeleton_len = r.len()?;
    let skeleton = r.bytes(skeleton_len)?;
    let n_arrays = r.len()?;
    let mut out: Vec<u8> = Vec::with_capacity(expected_len);
    let mut last = 0usize;
    let mut text = String::new();
    let mut ryu = ryu::Buffer::new();
    for _ in 0..n_arrays {
        let off = r.len()?;
        if off < last || off > skeleton.len() {
            return None;
        }
        let style = Style::from_u8(r.u8()?)?;
        let width = r.u8()?;
        let n = r.len()?;
        let sep = std::str::from_utf8(r.bytes_len()?).ok()?;
        let lead = std::str::from_utf8(r.bytes_len()?).ok()?;
        let trail = std::str::from_utf8(r.bytes_len()?).ok()?;
        out.extend_from_slice(&skeleton[last..off]);
        last = off;
        let width = match width {
            4 | 8 => usize::from(width),
            _ => return None,
        };
        let low = r.bytes(n.checked_mul(width - 1)?)?;
        let top: std::borrow::Cow<'_, [u8]> = match r.u8()? {
            0 => r.bytes(n)?.into(),
            1 => super::compact::decompress_plain(r.bytes_len()?, n)?.into(),
            _ => return None,
        };
        let n_exceptions = r.len()?;
        let mut exceptions = Vec::with_capacity(n_exceptions.min(n));
        for _ in 0..n_exceptions {
            let i = r.len()?;
            let style = Style::from_u8(r.u8()?)?;
            let v = f64::from_le_bytes(r.bytes(8)?.try_into().ok()?);
            if i >= n || exceptions.last().is_some_and(|&(j, _, _)| j >= i) {
                return None;
            }
            exceptions.push((i, style, v));
        }
        let mut exceptions = exceptions.into_iter().peekable();
        out.extend_from_slice(lead.as_bytes());
        let mut raw = [0u8; 8];
        for i in 0..n {
            if i > 0 {
                out.extend_from_slice(sep.as_bytes());
            }
            for (b, byte) in raw.iter_mut().enumerate().take(width - 1) {
                *byte = low[b * n + i];
            }
            raw[width - 1] = top[i];
            let (style, v) = match exceptions.next_if(|&(j, _, _)| j == i) {
                Some((_, s, v)) => (s, v),
                None if width == 4 => (
                    style,
                    f64::from(f32::from_le_bytes(raw[..4].try_into().ok()?)),
                ),
                None => (style, f64::from_le_bytes(raw)),
            };
            if !v.is_finite() {
                return None;
            }
            match style {
                // Straight into the output: no intermediate string.
                Style::Ryu64 => out.extend_from_slice(ryu.format_finite(v).as_bytes()),
                Style::Ryu32 => out.extend_from_slice(ryu.format_finite(v as f32).as_bytes()),
                Style::Python => {
                    text.clear();
                    python_repr(v, &mut text);
                    out.extend_from_slice(text.as_bytes());
                }
            }
            if out.len() > expected_len {
                return None;
            }
        }
        out.extend_from_slice(trail.as_bytes());
    }
    out.extend_from_slice(&skeleton[last..]);
    (r.is_empty() && out.len() == expected_len).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_repr_matches_python() {
        // Expected values from CPython's repr(float(...)).
        for (v, s) in [
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (0.00012345, "0.00012345"),
            (-0.006929283495992422, "-0.006929283495992422"),
            (1.0, "1.0"),
            (123.0, "123.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (2.5e-300, "2.5e-300"),
            (12.5, "12.5"),
        ] {
            let mut out = String::new();
            python_repr(v, &mut out);
            assert_eq!(out, s, "{v}");
        }
    }

    fn roundtrip(body: &str) -> Option<usize> {
        let packed = pack(body.as_bytes())?;
        assert_eq!(unpack(&packed, body.len()).unwrap(), body.as_bytes());
        Some(packed.len())
    }

    #[test]
    fn embeddings_in_each_style_pack_exactly() {
        let vals: Vec<f32> = (0..1536)
            .map(|i| ((i as f32) * 0.37).sin() * 0.05 - 1e-6 * i as f32)
            .collect();
        let py: Vec<String> = vals
            .iter()
            .map(|v| {
                let mut s = String::new();
                python_repr(f64::from(*v), &mut s);
                s
            })
            .collect();
        let r64: Vec<String> = vals
            .iter()
            .map(|v| ryu::Buffer::new().format_finite(f64::from(*v)).to_owned())
            .collect();
        let r32: Vec<String> = vals
            .iter()
            .map(|v| ryu::Buffer::new().format_finite(*v).to_owned())
            .collect();
        for (nums, sep) in [(&py, ", "), (&r64, ","), (&r32, ",\n        ")] {
            let body = format!(
                "{{\"object\":\"list\",\"data\":[{{\"object\":\"embedding\",\"index\":0,\"embedding\":[\n        {}\n      ]}}],\"model\":\"m\"}}",
                nums.join(sep)
            );
            let n = roundtrip(&body).expect("packs");
            assert!(n < 1536 * 4 + 200, "{n} bytes");
        }
    }

    #[test]
    fn numbers_another_printer_wrote_are_exceptions() {
        // Mostly float32 text, a few numbers in f64 text (another printer's choice).
        let nums: Vec<String> = (0..400)
            .map(|i| {
                let v = ((i as f32) * 0.731).cos() * 0.04;
                if i % 50 == 7 {
                    ryu::Buffer::new().format_finite(f64::from(v)).to_owned()
                } else {
                    ryu::Buffer::new().format_finite(v).to_owned()
                }
            })
            .collect();
        let body = format!(r#"{{"embedding":[{}]}}"#, nums.join(","));
        let n = roundtrip(&body).expect("packs with exceptions");
        assert!(n < 400 * 4 + 8 * 13 + 64, "{n} bytes");
    }

    #[test]
    fn anything_inexact_stays_text() {
        for body in [
            r#"{"embedding":[1,2,3]}"#,              // integers
            r#"{"embedding":[0.1, 0.2,0.3]}"#,       // mixed separators
            r#"{"embedding":[0.10,0.2]}"#,           // not shortest
            r#"{"embedding":"[0.1,0.2]"}"#,          // a string
            r#"{"embedding":[[0.1],[0.2]]}"#,        // nested
            r#"{"text":"\"embedding\":[0.1,0.2]"}"#, // inside a string
            r#"{"embedding":[]}"#,                   // empty
            r#"{"embedding":[0.1,"x"]}"#,            // not numbers
        ] {
            assert!(roundtrip(body).is_none(), "{body}");
        }
        // f64 values that are not f32s are kept as f64.
        let nums: Vec<String> = (1..40)
            .map(|i| {
                ryu::Buffer::new()
                    .format_finite(0.1 * f64::from(i) + 1e-13)
                    .to_owned()
            })
            .collect();
        let body = format!(r#"{{"embedding":[{}]}}"#, nums.join(","));
        let n = roundtrip(&body).expect("f64 values pack too");
        assert!(n > 39 * 8, "kept as f64: {n}");
    }

    #[test]
    fn malformed_packed_input_never_panics() {
        let body =
            r#"{"a":1,"embedding":[0.5,0.25,0.125,0.0625,0.03125,0.015625,0.0078125],"b":[1]}"#;
        let packed = pack(body.as_bytes()).unwrap();
        for cut in 0..packed.len() {
            let _ = unpack(&packed[..cut], body.len());
        }
        for i in 0..packed.len() {
            let mut bad = packed.clone();
            bad[i] ^= 0x5a;
            let _ = unpack(&bad, body.len());
        }
    }
}
