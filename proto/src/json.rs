//! The big-number rule of Herald's JSON bodies (PROTOCOL.md "Transports", "Publishing"): a
//! namespace id or SJID up to 2^53 travels as a JSON number, a larger one as a decimal string, so
//! that a JavaScript client (whose numbers are doubles) never rounds one. Readers accept both
//! forms for any value, and refuse a bare number above 2^53 (a JavaScript writer may already have
//! rounded it).

use serde_json::Value;

/// Numbers above this travel as decimal strings, both ways.
pub const MAX_JSON_INT: u64 = 1 << 53;

/// `n` as JSON: a number up to [`MAX_JSON_INT`], a decimal string above.
#[must_use]
pub fn value_of(n: u64) -> Value {
    if n > MAX_JSON_INT {
        Value::String(n.to_string())
    } else {
        Value::from(n)
    }
}

/// Appends `n` to `out` in the form [`value_of`] gives, without building a [`Value`].
pub fn write_u64(out: &mut String, n: u64) {
    use std::fmt::Write as _;
    let _ = if n > MAX_JSON_INT {
        write!(out, "\"{n}\"")
    } else {
        write!(out, "{n}")
    };
}

/// Reads a `u64` written by the rule: a JSON integer up to [`MAX_JSON_INT`] or a plain decimal
/// string (digits only) up to `u64::MAX`. Anything else is `None`.
#[must_use]
pub fn read_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().filter(|&n| n <= MAX_JSON_INT),
        Value::String(s) => crate::claims::parse_decimal(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_boundary_is_two_to_the_53() {
        assert_eq!(value_of(MAX_JSON_INT), Value::from(MAX_JSON_INT));
        assert_eq!(value_of(MAX_JSON_INT + 1), Value::from("9007199254740993"));
        assert_eq!(read_u64(&Value::from(MAX_JSON_INT + 1)), None);
        assert_eq!(
            read_u64(&Value::from("18446744073709551615")),
            Some(u64::MAX)
        );
        for bad in [
            Value::from("18446744073709551616"),
            Value::from("-1"),
            Value::from(" 1"),
            Value::from("1e3"),
            Value::from(""),
            Value::from(-1),
            Value::from(1.5),
            Value::Null,
        ] {
            assert_eq!(read_u64(&bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn every_u64_round_trips(n: u64) {
            prop_assert_eq!(read_u64(&value_of(n)), Some(n));
            let mut s = String::new();
            write_u64(&mut s, n);
            prop_assert_eq!(&s, &value_of(n).to_string());
        }
    }
}
