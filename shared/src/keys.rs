//! API-key and token material: generation, hashing, display prefixes.
use sha2::{Digest, Sha256};

/// Prefix of every aiproxy API key, so leaked keys are easy to recognise.
pub const API_KEY_PREFIX: &str = "sk-aiproxy-";

/// sha256 of a plaintext key; the only form in which keys are stored.
pub fn hash_key(plaintext: &str) -> [u8; 32] {
    Sha256::digest(plaintext.as_bytes()).into()
}

/// Hex sha256 of a plaintext key, as kept in `api_keys.key_hash`.
pub fn hash_key_hex(plaintext: &str) -> String {
    hex::encode(hash_key(plaintext))
}

/// `n` bytes from the operating system's CSPRNG, hex encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    #[allow(
        clippy::expect_used,
        reason = "without the OS's randomness no key or token can be made safely"
    )]
    getrandom::getrandom(&mut buf).expect("operating system RNG unavailable");
    hex::encode(buf)
}

/// A fresh API key: the fixed prefix and 48 hex characters (192 bits).
pub fn new_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_hex(24))
}

/// Characters of a key's secret part that may be shown again after creation.
const VISIBLE_SECRET: usize = 4;

/// The part of a key that may be shown again after creation: the fixed
/// prefix and four characters of a generated key; four characters of any
/// other (an operator-supplied key shows no more than a generated one).
pub fn visible_prefix(plaintext: &str) -> String {
    let fixed = if plaintext.starts_with(API_KEY_PREFIX) {
        API_KEY_PREFIX.len()
    } else {
        0
    };
    plaintext.chars().take(fixed + VISIBLE_SECRET).collect()
}

/// A secret shown as dots and, when long, its last four characters
/// (counted in characters, so any text is safe to mask).
pub fn mask_tail(secret: &str) -> String {
    let n = secret.chars().count();
    if n >= 20 {
        let tail: String = secret.chars().skip(n - VISIBLE_SECRET).collect();
        format!("••••{tail}")
    } else {
        "••••".into()
    }
}

/// Constant-time comparison of two secrets.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_mysql_sha2() {
        // SELECT SHA2('abc', 256)
        assert_eq!(
            hash_key_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn shown_parts_never_reveal_more_than_four_secret_characters() {
        let generated = new_api_key();
        assert_eq!(visible_prefix(&generated).len(), API_KEY_PREFIX.len() + 4);
        assert_eq!(visible_prefix("operator-chosen-secret-key"), "oper");
        assert_eq!(visible_prefix("日本語のキー0123456789"), "日本語の");
        assert_eq!(mask_tail("short"), "••••");
        assert_eq!(mask_tail("sk-ant-api03-0123456789abcdef"), "••••cdef");
        // Characters, not bytes: no slicing inside a multi-byte character.
        assert_eq!(mask_tail("ключ-к-апи-которыйдлинный"), "••••нный");
    }

    #[test]
    fn new_keys_are_unique_and_prefixed() {
        let a = new_api_key();
        let b = new_api_key();
        assert_ne!(a, b);
        assert!(a.starts_with(API_KEY_PREFIX));
        assert_eq!(a.len(), API_KEY_PREFIX.len() + 48);
        assert_eq!(visible_prefix(&a).len(), API_KEY_PREFIX.len() + 4);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
