//! Token checks as the session sees them: the gateway's verifier (EdDSA JWTs, keys by `kid`)
//! implements [`TokenCheck`]; tests use a table of tokens.

use herald_proto::Claims;

/// Seconds of clock skew allowed on `exp` and `nbf` (RFC 7519 §4.1.4), here and in the verifier.
pub const TOKEN_LEEWAY_S: u64 = 30;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Short stable reason, for the `reason` label of metrics (`expired`, `signature`, ...).
    pub label: &'static str,
    /// What the client is told in ERROR(`unauthorized`).
    pub message: String,
}

impl Refused {
    /// The token was well formed and signed, only too old.
    #[must_use]
    pub fn is_expiry(&self) -> bool {
        self.label == "expired"
    }
}

/// Verifies a client's token: signature, key, algorithm, `exp`/`nbf` with leeway, claims.
pub trait TokenCheck {
    /// The token's claims if it is honoured now.
    ///
    /// # Errors
    /// [`Refused`] with the reason when it is not.
    fn check(&self, token: &str) -> Result<Claims, Refused>;
}

/// A short stand-in for a token's `sub`, kept by every open session (a refresh must keep the
/// same `sub`; a revocation names one) instead of the string itself: memory is per connection.
/// Stable within a process, which is all it is compared within.
#[must_use]
pub fn sub_hash(sub: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    sub.hash(&mut h);
    h.finish()
}
