//! Token verification (PROTOCOL.md "Auth"): EdDSA JWTs, one or more public keys chosen by `kid`.

use crate::revocation::Revocations;
use herald_proto::Claims;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use std::collections::HashMap;
use std::path::Path;

/// Seconds of clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_S: u64 = herald_core::token::TOKEN_LEEWAY_S;

/// Why a token was refused. Each maps to ERROR(`unauthorized`) on the wire; the variant is for
/// logs and the `herald_auth_failures_total{reason}` metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token is not a JWT, or its claims do not parse (including a bad `ns`).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signed with something other than EdDSA.
    #[error("algorithm {0:?} is not accepted (EdDSA only)")]
    Algorithm(Algorithm),
    /// No `kid` while several keys are configured, or a `kid` no key has.
    #[error("unknown or missing key id {0:?}")]
    UnknownKey(Option<String>),
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `exp` (plus leeway) has passed.
    #[error("token expired")]
    Expired,
    /// Its `sub` was revoked (`POST /v1/disconnect`) after it was issued.
    #[error("token revoked")]
    Revoked,
    /// `nbf` (minus leeway) is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` or `aud` does not match the configuration.
    #[error("issuer or audience mismatch")]
    Issuer,
}

impl AuthError {
    /// Short label for metrics.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::Revoked => "revoked",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Issuer => "issuer",
        }
    }
}

/// Verifies tokens against the configured public keys and the revoked subjects.
pub struct Verifier {
    /// Keys by `kid`. A key loaded without a kid is stored under the empty string.
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    revocations: Revocations,
}

impl Verifier {
    /// A verifier over `keys` (kid → key). `issuer`/`audience` are checked when given.
    pub fn new(
        keys: HashMap<String, DecodingKey>,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_S;
        validation.validate_nbf = true;
        // A configured issuer or audience must be present, not merely match when present.
        let mut required = vec!["exp"];
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Verifier {
            keys,
            validation,
            revocations: Revocations::default(),
        }
    }

    /// The same with `leeway_s` seconds of clock skew allowed on `exp` and `nbf` instead of
    /// [`LEEWAY_S`].
    #[must_use]
    pub fn with_leeway(mut self, leeway_s: u64) -> Self {
        self.validation.leeway = leeway_s;
        self
    }

    /// The revoked subjects (`POST /v1/disconnect`).
    #[must_use]
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Loads `kid=path` or `path` specs of PEM (SPKI) Ed25519 public keys.
    pub fn load_keys(specs: &[String]) -> anyhow::Result<HashMap<String, DecodingKey>> {
        let mut keys = HashMap::new();
        for spec in specs {
            let (kid, path) = match spec.split_once('=') {
                Some((kid, path)) => (kid.to_owned(), path),
                None => (String::new(), spec.as_str()),
            };
            let pem = std::fs::read(Path::new(path))
                .map_err(|e| anyhow::anyhow!("auth key {path}: {e}"))?;
            let key = DecodingKey::from_ed_pem(&pem).map_err(|e| {
                anyhow::anyhow!("auth key {path}: not an Ed25519 public key in PEM: {e}")
            })?;
            if keys.insert(kid.clone(), key).is_some() {
                anyhow::bail!("auth key id {kid:?} is configured twice");
            }
        }
        Ok(keys)
    }

    /// Checks `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Algorithm(header.alg));
        }
        let key = match &header.kid {
            Some(kid) => self.keys.get(kid),
            None if self.keys.len() == 1 => self.keys.values().next(),
            None => None,
        }
        .ok_or_else(|| AuthError::UnknownKey(header.kid.clone()))?;
        use jsonwebtoken::errors::ErrorKind as K;
        let claims = decode::<Claims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                K::ExpiredSignature => AuthError::Expired,
                K::ImmatureSignature => AuthError::NotYetValid,
                K::InvalidSignature => AuthError::Signature,
                K::InvalidIssuer | K::InvalidAudience => AuthError::Issuer,
                K::MissingRequiredClaim(c) if c == "iss" || c == "aud" => AuthError::Issuer,
                K::InvalidAlgorithm => AuthError::Algorithm(header.alg),
                _ => AuthError::Malformed(e.to_string()),
            })?;
        if self.revocations.refuses(&claims) {
            return Err(AuthError::Revoked);
        }
        Ok(claims)
    }
}

impl herald_core::token::TokenCheck for Verifier {
    fn check(&self, token: &str) -> Result<Claims, herald_core::token::Refused> {
        self.verify(token).map_err(|e| herald_core::token::Refused {
            label: e.label(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
