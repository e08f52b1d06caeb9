//! Where a lock lives in Redis: the lock key itself and the names dlock derives from it.
//!
//! For a lock key `K` (the service's prefix included):
//!
//! | name | type | what |
//! |---|---|---|
//! | `K` | string | the lock: `<fencing token>:<owner token>`, with the lease as its expiry |
//! | `K#dlock:line{T}` | hash | the waiting line, while processes wait: one field per process (owner token → `"<arrival µs>:<until ms>:<hand-off lease ms>:<process id>"`), expiring 3 s after the last ask |
//! | `K#dlock:to:<process id>{T}` | channel | what one waiting process hears about `K`: hand-offs to it (`g:<token>:<owner>`) and release notices (`r`) |
//!
//! Every name starts with `K`, so it lives under the service's prefix (an ACL such as
//! `~app:* &app:*` covers all of them), and all of a lock's names hash to `K`'s Redis Cluster
//! slot: when `K` has a hash tag (`app:{user:7}:cart`), appending keeps it; when it has none,
//! `{T}` is a short tag chosen to hash to `K`'s own slot. Lock keys may not contain
//! [`RESERVED`], so a derived name can never be another lock's key.

use std::sync::OnceLock;

/// What every derived name contains, and lock keys may not.
pub(super) const RESERVED: &str = "#dlock:";

/// The waiting line of the lock `key`.
pub(super) fn line(key: &str) -> String {
    derived(key, "line")
}

/// The channel on which the process `process` hears releases and hand-offs of `key`.
pub(super) fn notice_channel(key: &str, process: &str) -> String {
    derived(key, &["to:", process].concat())
}

/// `key#dlock:<role>`, with a tag keeping it in `key`'s slot when `key` has no tag of its own.
fn derived(key: &str, role: &str) -> String {
    let tag = slot_tag(key);
    let mut name =
        String::with_capacity(key.len() + RESERVED.len() + role.len() + tag.map_or(0, |t| t.len() + 2));
    name.push_str(key);
    name.push_str(RESERVED);
    name.push_str(role);
    if let Some(tag) = tag {
        name.push('{');
        name.push_str(tag);
        name.push('}');
    }
    name
}

/// Why `key` cannot be a lock key on Redis, if it cannot.
pub(super) fn check(key: &str) -> Result<(), String> {
    if key.contains(RESERVED) {
        return Err(format!(
            "it contains `{RESERVED}`, which dlock's Redis backend reserves for the names it derives from lock keys (waiting line, channels); choose a key without it"
        ));
    }
    Ok(())
}

#[allow(dead_code, reason = "for the Redis Cluster backend's check_key")]
/// Whether all of `key`'s derived names share its Redis Cluster slot: always, unless `key`
/// has an unmatched `{` or starts a tag with `{}` (Redis then hashes the whole name).
pub(super) fn shares_slot(key: &str) -> bool {
    hash_tag(key).is_some() || !key.contains('{')
}

/// The tag to append to a derived name of `key`: none when `key` has a hash tag (the derived
/// name keeps it); one that hashes to `key`'s slot when `key` has no `{` at all; none for
/// the rare key with a `{` that forms no tag (see [`shares_slot`]).
fn slot_tag(key: &str) -> Option<&'static str> {
    // No `{` at all: no tag of its own (the common case, one scan).
    if key.contains('{') {
        return None;
    }
    Some(tag_for_slot(crc16(key.as_bytes()) % 16384))
}

/// The part of `key` Redis Cluster hashes, if it is a tag: between the first `{` and the first
/// `}` after it, when not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// Redis Cluster's slot of `key` (CRC16/XMODEM of the key, or of its tag, modulo 16384).
#[allow(dead_code, reason = "for the Redis Cluster backend")]
pub(super) fn slot(key: &[u8]) -> u16 {
    let hashed = std::str::from_utf8(key).ok().and_then(hash_tag).map_or(key, str::as_bytes);
    crc16(hashed) % 16384
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster computes it: a byte
/// at a time from a table (the lock path computes it for every call).
fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |crc, &byte| (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ byte)])
}

/// The CRC of every byte value, built at compile time.
const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
};

/// A short string of letters and digits whose slot is `slot`. The table is built once, on
/// first use (a few hundred thousand CRCs of up to four bytes).
fn tag_for_slot(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let mut tags = vec![String::new(); 16384];
        let mut missing = tags.len();
        // Every string of one, two, three, four characters in turn, until every slot has one.
        'search: for len in 1..=4u32 {
            for n in 0..36usize.pow(len) {
                let mut candidate = [0u8; 4];
                let mut rest = n;
                for digit in candidate[..len as usize].iter_mut().rev() {
                    *digit = ALPHABET[rest % 36];
                    rest /= 36;
                }
                let candidate = &candidate[..len as usize];
                let tag = &mut tags[usize::from(crc16(candidate) % 16384)];
                if tag.is_empty() {
                    *tag = String::from_utf8_lossy(candidate).into_owned();
                    missing -= 1;
                    if missing == 0 {
                        break 'search;
                    }
                }
            }
        }
        tags
    });
    tags.get(usize::from(slot)).map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::FullKey;

    #[test]
    fn crc16_matches_redis_cluster() {
        // The examples of the Redis Cluster specification.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), crc16(b"{bar") % 16384);
    }

    #[test]
    fn every_slot_has_a_tag() {
        for s in 0..16384u16 {
            let tag = tag_for_slot(s);
            assert!(!tag.is_empty() && tag.len() <= 4, "slot {s}: {tag:?}");
            assert_eq!(slot(tag.as_bytes()), s);
        }
    }

    #[test]
    fn derived_names_share_the_lock_key_slot() {
        for key in ["app:user:42", "app:{user:42}:cart", "x", "app:é:1", "{t}", "a}b"] {
            let line = line(key);
            assert!(shares_slot(key));
            assert_eq!(slot(line.as_bytes()), slot(key.as_bytes()), "{key} / {line}");
            let channel = notice_channel(key, "0123abcd");
            assert_eq!(slot(channel.as_bytes()), slot(key.as_bytes()), "{key} / {channel}");
            assert!(line.starts_with(key) && channel.starts_with(key));
            assert!(line.contains(RESERVED));
        }
        assert_eq!(line(FullKey::new("app:", "{user:42}:cart").as_str()), "app:{user:42}:cart#dlock:line");
        assert!(!shares_slot("a{b") && !shares_slot("a{}b"));
    }

    #[test]
    fn lock_keys_may_not_contain_the_reserved_marker() {
        assert!(check("user:42").is_ok());
        assert!(check("user:42#dlock:line").is_err());
    }
}
