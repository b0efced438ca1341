//! The claims of a Herald token (PROTOCOL.md "Auth").
//!
//! Signature checking lives in the gateway (it owns keys and a clock); this module is the shape of
//! the claims and the `ns` grant rules, so that minting tools, the gateway and tests agree on them.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Claims carried by a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id, for logs.
    pub sub: String,
    /// Namespaces the holder may subscribe to.
    pub ns: NsGrant,
    /// Expiry, unix seconds (required).
    pub exp: u64,
    /// Not-before, unix seconds (honoured when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer (checked by the gateway when it is configured with one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Client class (extension, e.g. `"mobile"`): the gateway may choose the heartbeat by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cls: Option<String>,
    /// Issued-at, unix seconds (RFC 7519): a revocation "issued before T" refuses tokens without
    /// it or older (PROTOCOL.md C18).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// Which namespaces a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NsGrant {
    /// `["*"]`: every namespace.
    All,
    /// These namespaces, sorted and without repeats (so [`NsGrant::allows`] is a binary search).
    /// A boxed slice, not a `Vec`: every open session keeps one (16 bytes instead of 24).
    List(Box<[u64]>),
}

impl NsGrant {
    /// A grant of exactly these namespaces.
    #[must_use]
    pub fn list(mut ns: Vec<u64>) -> Self {
        ns.sort_unstable();
        ns.dedup();
        NsGrant::List(ns.into_boxed_slice())
    }

    /// Whether `ns` may be subscribed to.
    #[must_use]
    pub fn allows(&self, ns: u64) -> bool {
        match self {
            NsGrant::All => true,
            NsGrant::List(list) => list.binary_search(&ns).is_ok(),
        }
    }
}

impl Serialize for NsGrant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NsGrant::All => {
                let mut seq = s.serialize_seq(Some(1))?;
                seq.serialize_element("*")?;
                seq.end()
            }
            NsGrant::List(list) => {
                let mut seq = s.serialize_seq(Some(list.len()))?;
                for ns in list {
                    // Above 2^53 a JSON number loses precision in many languages: use a string.
                    if *ns > (1u64 << 53) {
                        seq.serialize_element(&ns.to_string())?;
                    } else {
                        seq.serialize_element(ns)?;
                    }
                }
                seq.end()
            }
        }
    }
}

/// One `ns` array item: a number, a decimal string, or the wildcard.
enum Item {
    Ns(u64),
    Wildcard,
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl Visitor<'_> for ItemVisitor {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a namespace id as a non-negative integer or a decimal string, or \"*\"",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Item, E> {
                Ok(Item::Ns(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                if v == "*" {
                    return Ok(Item::Wildcard);
                }
                parse_decimal(v)
                    .map(Item::Ns)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(ItemVisitor)
    }
}

/// Parses a plain decimal `u64`: ASCII digits only, no sign, no spaces, no overflow.
#[must_use]
pub fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl<'de> Deserialize<'de> for NsGrant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct GrantVisitor;
        impl<'de> Visitor<'de> for GrantVisitor {
            type Value = NsGrant;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of namespace ids, or [\"*\"]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NsGrant, A::Error> {
                let mut list = Vec::new();
                let mut wildcard = false;
                while let Some(item) = seq.next_element::<Item>()? {
                    match item {
                        Item::Ns(ns) => list.push(ns),
                        Item::Wildcard => wildcard = true,
                    }
                }
                match (wildcard, list.is_empty()) {
                    (true, true) => Ok(NsGrant::All),
                    (true, false) => Err(de::Error::custom("\"*\" must be the only item of ns")),
                    (false, _) => Ok(NsGrant::list(list)),
                }
            }
        }
        d.deserialize_seq(GrantVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(json: &str) -> Result<NsGrant, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn grants() {
        assert_eq!(grant(r#"["*"]"#).unwrap(), NsGrant::All);
        assert_eq!(grant(r#"[3, "1", 3]"#).unwrap(), NsGrant::list(vec![1, 3]));
        assert_eq!(
            grant(r#"["18446744073709551615"]"#).unwrap(),
            NsGrant::list(vec![u64::MAX])
        );
        assert_eq!(grant("[]").unwrap(), NsGrant::list(vec![]));
        assert!(grant(r#"["*", 1]"#).is_err());
        assert!(grant(r#"[-1]"#).is_err());
        assert!(grant(r#"[1.5]"#).is_err());
        assert!(grant(r#"["x"]"#).is_err());
        assert!(grant(r#"["+1"]"#).is_err());
        assert!(grant(r#"["18446744073709551616"]"#).is_err());
        assert!(grant(r#"[null]"#).is_err());
        assert!(grant(r#""*""#).is_err());
    }

    #[test]
    fn allows() {
        let g = NsGrant::list(vec![9, 2, 5]);
        assert!(g.allows(5) && !g.allows(4));
        assert!(NsGrant::All.allows(u64::MAX));
    }

    #[test]
    fn round_trip() {
        let c = Claims {
            sub: "u1".into(),
            ns: NsGrant::list(vec![1, u64::MAX]),
            exp: 10,
            nbf: None,
            iss: None,
            cls: Some("mobile".into()),
            iat: Some(5),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""18446744073709551615""#));
        assert_eq!(serde_json::from_str::<Claims>(&json).unwrap(), c);
    }
}
