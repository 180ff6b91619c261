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
    getrandom::getrandom(&mut buf).expect("operating system RNG unavailable");
    hex::encode(buf)
}

/// A fresh API key: the fixed prefix and 48 hex characters (192 bits).
pub fn new_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_hex(24))
}

/// The part of a key that may be shown again after creation.
pub fn visible_prefix(plaintext: &str) -> String {
    plaintext.chars().take(API_KEY_PREFIX.len() + 4).collect()
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
