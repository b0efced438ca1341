//! Ed25519 key generation and token minting: the `gen-key` and `mint-token` subcommands, the
//! standalone dev key, and tests.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use herald_proto::{Claims, NsGrant};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32 key bytes follow.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A signing key with its public half.
#[derive(Clone)]
pub struct SigningKey {
    /// PKCS#8 DER of the private key.
    pkcs8: Vec<u8>,
    /// Raw 32-byte public key.
    public: Vec<u8>,
    /// Key id written into minted tokens' headers.
    pub kid: Option<String>,
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate(kid: Option<String>) -> anyhow::Result<Self> {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("could not generate an Ed25519 key"))?;
        Self::from_pkcs8(doc.as_ref(), kid)
    }

    /// From PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8], kid: Option<String>) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 private key: {e}"))?;
        Ok(SigningKey {
            pkcs8: der.to_vec(),
            public: pair.public_key().as_ref().to_vec(),
            kid,
        })
    }

    /// From a PKCS#8 PEM file's text.
    pub fn from_pem(pem: &str, kid: Option<String>) -> anyhow::Result<Self> {
        Self::from_pkcs8(&pem_decode(pem, "PRIVATE KEY")?, kid)
    }

    /// The private key as PKCS#8 PEM.
    #[must_use]
    pub fn private_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    /// The public key as SPKI PEM (what `--auth-key` reads).
    #[must_use]
    pub fn public_pem(&self) -> String {
        let mut spki = SPKI_ED25519_PREFIX.to_vec();
        spki.extend_from_slice(&self.public);
        pem_encode("PUBLIC KEY", &spki)
    }

    /// The key a verifier needs.
    #[must_use]
    pub fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_ed_der(&self.public)
    }

    /// Signs `claims` (plus optional `aud`) into a JWT.
    pub fn mint(&self, claims: &Claims, audience: Option<&str>) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid.clone_from(&self.kid);
        let mut value = serde_json::to_value(claims)?;
        if let Some(aud) = audience {
            value["aud"] = aud.into();
        }
        Ok(encode(
            &header,
            &value,
            &EncodingKey::from_ed_der(&self.pkcs8),
        )?)
    }
}

/// Claims for `sub` over `ns`, valid for `ttl_s` seconds from now.
#[must_use]
pub fn claims_for(sub: &str, ns: NsGrant, ttl_s: u64) -> Claims {
    Claims {
        sub: sub.to_owned(),
        ns,
        exp: unix_now() + ttl_s,
        nbf: None,
        iss: None,
        cls: None,
        iat: Some(unix_now()),
    }
}

/// Parses a `--ns` list: `*`, or comma-separated decimal ids.
pub fn parse_ns_list(s: &str) -> anyhow::Result<NsGrant> {
    if s.trim() == "*" {
        return Ok(NsGrant::All);
    }
    let ids = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            herald_proto::claims::parse_decimal(p.trim())
                .ok_or_else(|| anyhow::anyhow!("namespace {p:?} is not a decimal id"))
        })
        .collect::<anyhow::Result<Vec<u64>>>()?;
    Ok(NsGrant::list(ids))
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(pem: &str, label: &str) -> anyhow::Result<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or_else(|| anyhow::anyhow!("no {begin} line"))?
        + begin.len();
    let stop = pem[start..]
        .find(&end)
        .ok_or_else(|| anyhow::anyhow!("no {end} line"))?
        + start;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
}
