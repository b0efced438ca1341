//! The body of `POST /v1/publish` on a standalone gateway's admin listener (PROTOCOL.md
//! "Publishing"), sans-IO: `{"changes": [{"ns": …, "sjid": …}, …]}` with the big-number rule of
//! [`crate::json`]. The metaserver (or any publisher) writes it with [`encode`]; the gateway reads
//! it with [`parse`].

use crate::json;
use serde_json::{Map, Value};

/// The publish endpoint (admin listener, standalone mode).
pub const PATH: &str = "/v1/publish";
/// Largest publish body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// Parses a publish body; any malformed entry rejects the whole batch (nothing is applied). The
/// error names the entry, for the `message` of a 400.
pub fn parse(body: &[u8]) -> Result<Vec<(u64, u64)>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let list = v
        .get("changes")
        .and_then(Value::as_array)
        .ok_or("body must be an object with a \"changes\" array")?;
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let field = |name: &str| -> Result<u64, String> {
                let value = entry
                    .get(name)
                    .ok_or_else(|| format!("changes[{i}] has no \"{name}\""))?;
                json::read_u64(value).ok_or_else(|| {
                    format!("changes[{i}].{name} must be an integer up to 2^53 or a decimal string")
                })
            };
            let (ns, sjid) = (field("ns")?, field("sjid")?);
            if sjid == 0 {
                return Err(format!("changes[{i}].sjid must be at least 1"));
            }
            Ok((ns, sjid))
        })
        .collect()
}

/// A publish body for `changes` (in order; SJIDs must be at least 1 to be accepted).
#[must_use]
pub fn encode(changes: &[(u64, u64)]) -> Vec<u8> {
    let list = changes
        .iter()
        .map(|&(ns, sjid)| {
            let mut entry = Map::new();
            entry.insert("ns".into(), json::value_of(ns));
            entry.insert("sjid".into(), json::value_of(sjid));
            Value::Object(entry)
        })
        .collect();
    let mut body = Map::new();
    body.insert("changes".into(), Value::Array(list));
    Value::Object(body).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn publish_bodies() {
        assert_eq!(
            parse(br#"{"changes":[{"ns":7,"sjid":42},{"ns":"18446744073709551615","sjid":"9"}]}"#),
            Ok(vec![(7, 42), (u64::MAX, 9)])
        );
        assert_eq!(parse(br#"{"changes":[]}"#), Ok(vec![]));
        for bad in [
            &br#"{"changes":[{"ns":7,"sjid":0}]}"#[..],
            br#"{"changes":[{"ns":7}]}"#,
            br#"{"changes":[{"ns":-1,"sjid":1}]}"#,
            br#"{"changes":[{"ns":1.5,"sjid":1}]}"#,
            br#"{"changes":[{"ns":9007199254740993,"sjid":1}]}"#,
            br#"{"changes":[{"ns":"x","sjid":1}]}"#,
            br#"{"changes":{}}"#,
            b"nope",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn bodies_round_trip(changes in proptest::collection::vec((any::<u64>(), 1..=u64::MAX), 0..32)) {
            prop_assert_eq!(parse(&encode(&changes)), Ok(changes));
        }

        #[test]
        fn any_bytes_parse_or_fail_cleanly(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&body);
        }
    }
}
