//! [`FullKey`]: a lock key as the backend stores it, the service's prefix included.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

/// A lock key as the backend sees it: the service's key prefix followed by the key the caller
/// asked for (`"payments:" + "user:42"`).
///
/// The two halves never get confused: a key the caller wrote is a `&str`, a key a backend
/// stores is a `FullKey`. It is cheap to clone (one reference count) and dereferences to the
/// whole text.
///
/// ```
/// use dlock::backend::FullKey;
///
/// let key = FullKey::new("payments:", "user:42");
/// assert_eq!(key.as_str(), "payments:user:42");
/// assert_eq!(key.prefix(), "payments:");
/// assert_eq!(key.unprefixed(), "user:42");
/// ```
#[derive(Clone)]
pub struct FullKey {
    text: Arc<str>,
    prefix_len: usize,
}

impl FullKey {
    /// `prefix` followed by `key`.
    ///
    /// ```
    /// assert_eq!(dlock::backend::FullKey::new("app:", "user:1").as_str(), "app:user:1");
    /// ```
    pub fn new(prefix: &str, key: &str) -> Self {
        let text: Arc<str> = if prefix.is_empty() { Arc::from(key) } else { joined(prefix, key) };
        Self { text, prefix_len: prefix.len() }
    }

    /// The whole key, prefix included: what the backend stores.
    ///
    /// ```
    /// assert_eq!(dlock::backend::FullKey::new("", "user:1").as_str(), "user:1");
    /// ```
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The service's prefix part.
    ///
    /// ```
    /// assert_eq!(dlock::backend::FullKey::new("app:", "user:1").prefix(), "app:");
    /// ```
    pub fn prefix(&self) -> &str {
        &self.text[..self.prefix_len]
    }

    /// The key as the caller wrote it, without the service's prefix.
    ///
    /// ```
    /// assert_eq!(dlock::backend::FullKey::new("app:", "user:1").unprefixed(), "user:1");
    /// ```
    pub fn unprefixed(&self) -> &str {
        &self.text[self.prefix_len..]
    }
}

/// `prefix` followed by `key`, put together on the stack when short enough, so that the `Arc`
/// is the only allocation (a key is made on every request).
fn joined(prefix: &str, key: &str) -> Arc<str> {
    const ON_STACK: usize = 192;
    let len = prefix.len() + key.len();
    if len <= ON_STACK {
        let mut buf = [0u8; ON_STACK];
        buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
        buf[prefix.len()..len].copy_from_slice(key.as_bytes());
        // Two `str`s back to back are UTF-8: this always succeeds.
        if let Ok(text) = std::str::from_utf8(&buf[..len]) {
            return Arc::from(text);
        }
    }
    Arc::from([prefix, key].concat())
}

impl Deref for FullKey {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for FullKey {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl Borrow<str> for FullKey {
    fn borrow(&self) -> &str {
        &self.text
    }
}

/// Two full keys are the same key when their text is: the backend cannot tell where a prefix
/// ended.
impl PartialEq for FullKey {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for FullKey {}

impl PartialEq<str> for FullKey {
    fn eq(&self, other: &str) -> bool {
        &*self.text == other
    }
}

impl PartialEq<&str> for FullKey {
    fn eq(&self, other: &&str) -> bool {
        &*self.text == *other
    }
}

impl PartialOrd for FullKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FullKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl Hash for FullKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that `Borrow<str>` lookups in maps work.
        self.text.hash(state);
    }
}

impl fmt::Display for FullKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for FullKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.text, f)
    }
}

#[cfg(test)]
mod tests {
    use super::FullKey;

    #[test]
    fn a_full_key_is_the_prefix_then_the_key_at_every_length() {
        for len in [0, 1, 150, 191, 192, 193, 500] {
            let key = format!("é{}", "k".repeat(len));
            let full = FullKey::new("app:", &key);
            assert_eq!(full.as_str(), format!("app:{key}"));
            assert_eq!(full.prefix(), "app:");
            assert_eq!(full.unprefixed(), key);
        }
    }
}
