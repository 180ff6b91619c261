//! Secrets at rest and in flight: credential sealing, password hashing, JWTs.
use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not decrypt with this secret key")]
    Decrypt,
    #[error("password hashing failed")]
    Hash,
}

/// Derives a purpose-bound 32-byte key from the operator's secret.
fn derive(secret: &str, purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"aiproxy\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    h.finalize().into()
}

const SEAL_PREFIX: &str = "v1:";

/// Encrypts upstream credentials with AES-256-GCM before they touch the database.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl Sealer {
    pub fn new(secret: &str) -> Self {
        let key = derive(secret, "credentials");
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        }
    }

    /// `v1:` + hex(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, plaintext: &[u8]) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        #[allow(
            clippy::expect_used,
            reason = "AES-GCM fails only on plaintexts beyond 64 GiB"
        )]
        let ciphertext = self
            .cipher
            .encrypt(&nonce, plaintext)
            .expect("AES-GCM encryption cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        format!("{SEAL_PREFIX}{}", hex::encode(out))
    }

    /// A text sealed by [`Sealer::seal`], or one stored before sealing (it
    /// has no seal prefix) as it is.
    pub fn open_text(&self, stored: &str) -> Result<String, CryptoError> {
        if !self.is_sealed(stored) {
            return Ok(stored.to_string());
        }
        String::from_utf8(self.open(stored)?).map_err(|_| CryptoError::Malformed)
    }

    pub fn is_sealed(&self, stored: &str) -> bool {
        stored.starts_with(SEAL_PREFIX)
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, CryptoError> {
        let raw = sealed
            .strip_prefix(SEAL_PREFIX)
            .ok_or(CryptoError::Malformed)?;
        let bytes = hex::decode(raw).map_err(|_| CryptoError::Malformed)?;
        if bytes.len() < 12 + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// argon2id hash in PHC string form.
pub fn hash_password(password: &str) -> Result<String, CryptoError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| CryptoError::Hash)
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Claims of an admin-API token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: i64,
    pub username: String,
    pub role: aiproxy_shared::domain::Role,
    pub iat: i64,
    pub exp: i64,
    /// The user's token generation at issue; a password change moves it on.
    #[serde(default)]
    pub generation: i64,
}

/// HS256 keys for admin-API tokens.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub expire_hours: u64,
}

impl JwtKeys {
    pub fn new(secret: &str, expire_hours: u64) -> Self {
        let key = derive(secret, "jwt");
        Self {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            expire_hours,
        }
    }

    pub fn issue(
        &self,
        user_id: i64,
        username: &str,
        role: aiproxy_shared::domain::Role,
        generation: i64,
    ) -> (String, Claims) {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            username: username.to_string(),
            role,
            iat: now,
            exp: now + (self.expire_hours as i64) * 3600,
            generation,
        };
        #[allow(
            clippy::expect_used,
            reason = "HMAC signing of plain claims cannot fail"
        )]
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        (token, claims)
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn seal_round_trips_and_rejects_other_keys() {
        let s = Sealer::new(SECRET);
        let sealed = s.seal(b"{\"api_key\":\"sk-ant-xyz\"}");
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("sk-ant"));
        assert_eq!(s.open(&sealed).unwrap(), b"{\"api_key\":\"sk-ant-xyz\"}");
        assert_ne!(s.seal(b"x"), s.seal(b"x"), "nonces must differ");
        let other = Sealer::new("another-secret-another-secret-xx");
        assert!(matches!(other.open(&sealed), Err(CryptoError::Decrypt)));
        assert!(matches!(s.open("plain"), Err(CryptoError::Malformed)));
    }

    #[test]
    fn passwords_hash_with_argon2id() {
        let h = hash_password("hunter2").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("hunter2", &h));
        assert!(!verify_password("hunter3", &h));
        assert!(!verify_password("hunter2", "not-a-hash"));
    }

    #[test]
    fn jwt_round_trip_and_expiry() {
        let keys = JwtKeys::new(SECRET, 1);
        let (token, _) = keys.issue(7, "admin", aiproxy_shared::domain::Role::Admin, 0);
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, 7);
        assert_eq!(claims.role, aiproxy_shared::domain::Role::Admin);
        let other = JwtKeys::new("another-secret-another-secret-xx", 1);
        assert!(other.verify(&token).is_err());
        let expired = Claims {
            sub: 1,
            username: "a".into(),
            role: aiproxy_shared::domain::Role::Admin,
            iat: 0,
            exp: 1,
            generation: 0,
        };
        let token = jsonwebtoken::encode(&Header::default(), &expired, &keys.encoding).unwrap();
        assert!(keys.verify(&token).is_err());
    }
}
