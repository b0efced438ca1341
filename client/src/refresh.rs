//! When to refresh a session's token in-band (PROTOCOL.md C17): at 80% of its lifetime, jittered
//! by ±10% of it, so a million clients whose tokens were minted together spread their REFRESH
//! frames over a fifth of the lifetime instead of sending them in the same second.
//!
//! The client only reads the token's `iat` and `exp` (the payload of the JWT, unverified: the
//! gateway verifies; a wrong reading only moves a refresh).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use std::time::Duration;

/// `(iat, exp)` of a JWT, in unix seconds (`iat` absent: `None`). `None` if unreadable.
#[must_use]
pub fn lifetime(token: &str) -> Option<(Option<u64>, u64)> {
    let payload = token.split('.').nth(1)?;
    let json = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some((claims.get("iat").and_then(serde_json::Value::as_u64), exp))
}

/// How long from `now` (unix seconds, when the token was taken if it has no `iat`) until the
/// token should be refreshed: 80% of its lifetime ± 10%, drawn with `rng`. `None` for a token
/// that cannot be read.
pub fn delay(token: &str, now: u64, rng: &mut impl Rng) -> Option<Duration> {
    let (iat, exp) = lifetime(token)?;
    let issued = iat.unwrap_or(now).min(exp);
    let life = (exp - issued) as f64;
    let at = issued as f64 + life * rng.random_range(0.7..=0.9);
    Some(Duration::from_secs_f64((at - now as f64).max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJFZERTQSJ9.{}.sig",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_iat_and_exp() {
        assert_eq!(
            lifetime(&jwt(r#"{"exp":200,"iat":100}"#)),
            Some((Some(100), 200))
        );
        assert_eq!(lifetime(&jwt(r#"{"exp":200}"#)), Some((None, 200)));
        assert_eq!(lifetime("not a jwt"), None);
        assert_eq!(lifetime(&jwt(r#"{"iat":1}"#)), None);
    }

    #[test]
    fn refreshes_between_70_and_90_percent_spread_out() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let token = jwt(r#"{"exp":1000,"iat":0}"#);
        let delays: Vec<u64> = (0..1000)
            .map(|_| delay(&token, 0, &mut rng).unwrap().as_secs())
            .collect();
        assert!(delays.iter().all(|d| (700..=900).contains(d)), "{delays:?}");
        let early = delays.iter().filter(|&&d| d < 800).count();
        assert!((350..650).contains(&early), "jittered both ways: {early}");
        // Taken late in its life: refresh at once.
        assert_eq!(delay(&token, 950, &mut rng), Some(Duration::ZERO));
        // No iat: the lifetime counts from now.
        let no_iat = jwt(r#"{"exp":1100}"#);
        let d = delay(&no_iat, 100, &mut rng).unwrap().as_secs();
        assert!((700..=900).contains(&d), "{d}");
    }
}
