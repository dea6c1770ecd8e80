//! Key shapes: which keys belong to the cache, and glob escaping for `SCAN MATCH`.

/// Escapes Redis glob metacharacters (`*`, `?`, `[`, `]`, `\`) so `s` matches only itself.
///
/// ```
/// assert_eq!(cache_redis::escape_glob("team*[a]?"), r"team\*\[a\]\?");
/// ```
pub fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether `key` has the shape of a cache entry key: 64 lowercase hex digits (the BLAKE3 hash),
/// alone or after `namespace:` — the keys `clear(None)` removes.
///
/// ```
/// let h = "0123456789abcdef".repeat(4);
/// assert!(cache_redis::is_entry_key(&h));
/// assert!(cache_redis::is_entry_key(&format!("team:sub:{h}")));
/// assert!(!cache_redis::is_entry_key(&format!("x{h}")));
/// assert!(!cache_redis::is_entry_key("session:42"));
/// ```
pub fn is_entry_key(key: &str) -> bool {
    let b = key.as_bytes();
    if b.len() < 64 {
        return false;
    }
    let (prefix, hash) = b.split_at(b.len() - 64);
    hash.iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        && (prefix.is_empty() || prefix.ends_with(b":"))
}
