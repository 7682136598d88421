//! Scoped tokens: API credentials limited to some collections and to a
//! time, checked by the API-key layer without a round trip to anything.
//!
//! A token is `engram-token.v1.<claims>.<mac>`: the claims are JSON in
//! unpadded base64url, the MAC is HMAC-SHA256 under
//! `[security] token_signing_key` over everything before the last dot.
//! Whoever holds the signing key mints tokens (`engram token`); every
//! coordinator holding it verifies them. A token cannot be revoked one by
//! one: keep lifetimes short, and rotate the signing key to revoke them
//! all (docs/security.md).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What every token starts with: tells a token from a plain key.
pub const PREFIX: &str = "engram-token.v1.";

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The collections whose routes the token may call; nothing else.
    pub collections: Vec<String>,
    /// Whether it may also write (add, delete and curate items, run
    /// jobs) in them; never administration (deleting a collection,
    /// compaction, resharding, the cluster, snapshots).
    pub write: bool,
    /// Unix time (seconds) from which it is refused.
    pub expires: u64,
}

/// Why a presented token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature is not valid")]
    BadSignature,
    #[error("the token expired at unix time {expires}")]
    Expired { expires: u64 },
}

type HmacSha256 = Hmac<Sha256>;

fn mac(signing_key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(signing_key).expect("HMAC takes a key of any length")
}

/// Whether `presented` is a token (rather than a plain key).
pub fn is_token(presented: &[u8]) -> bool {
    presented.starts_with(PREFIX.as_bytes())
}

/// A token carrying `claims`, signed with `signing_key`.
pub fn sign(claims: &Claims, signing_key: &[u8]) -> String {
    let body = serde_json::to_vec(claims).expect("claims serialise");
    let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body));
    let mut mac = mac(signing_key);
    mac.update(signed.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{tag}")
}

/// The claims of `presented` if `signing_key` signed it and it has not
/// expired at `now` (unix seconds). The signature is checked (in constant
/// time) before the claims are read.
pub fn verify(presented: &[u8], signing_key: &[u8], now: u64) -> Result<Claims, TokenError> {
    let text = std::str::from_utf8(presented).map_err(|_| TokenError::Malformed)?;
    let (signed, tag) = text.rsplit_once('.').ok_or(TokenError::Malformed)?;
    if !signed.starts_with(PREFIX) {
        return Err(TokenError::Malformed);
    }
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| TokenError::Malformed)?;
    let mut mac = mac(signing_key);
    mac.update(signed.as_bytes());
    mac.verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    let body = URL_SAFE_NO_PAD
        .decode(&signed[PREFIX.len()..])
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
    if now >= claims.expires {
        return Err(TokenError::Expired {
            expires: claims.expires,
        });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"signing-key-0123456789abcdef";

    fn claims() -> Claims {
        Claims {
            collections: vec!["a".into(), "b-2".into()],
            write: false,
            expires: 1_000,
        }
    }

    #[test]
    fn a_token_says_what_it_was_signed_with_until_it_expires() {
        let token = sign(&claims(), KEY);
        assert!(is_token(token.as_bytes()));
        assert_eq!(verify(token.as_bytes(), KEY, 999), Ok(claims()));
        assert_eq!(
            verify(token.as_bytes(), KEY, 1_000),
            Err(TokenError::Expired { expires: 1_000 })
        );
        assert_eq!(
            verify(token.as_bytes(), b"another-key-0123456789abcdef", 0),
            Err(TokenError::BadSignature)
        );
        for malformed in [
            "",
            "engram-token.v1.",
            "engram-token.v1.e30",
            "key-0123456789",
        ] {
            assert_eq!(
                verify(malformed.as_bytes(), KEY, 0),
                Err(TokenError::Malformed),
                "{malformed:?}"
            );
        }
    }

    #[test]
    fn widened_claims_under_the_old_signature_are_refused() {
        let token = sign(&claims(), KEY);
        let (_, tag) = token.rsplit_once('.').unwrap();
        let wider = Claims {
            collections: vec!["a".into(), "b-2".into(), "secret".into()],
            write: true,
            expires: u64::MAX,
        };
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wider).unwrap());
        let forged = format!("{PREFIX}{body}.{tag}");
        assert_eq!(
            verify(forged.as_bytes(), KEY, 0),
            Err(TokenError::BadSignature)
        );
    }

    proptest! {
        /// Any change to any byte of a token makes it refused.
        #[test]
        fn any_flipped_byte_is_refused(at in 0usize..200, bit in 0u8..8) {
            let token = sign(&claims(), KEY).into_bytes();
            let at = at % token.len();
            let mut changed = token.clone();
            changed[at] ^= 1 << bit;
            prop_assert!(verify(&changed, KEY, 0).is_err());
        }
    }
}
