//! Which web origins may read long-poll answers (CORS, PROTOCOL.md C16), sans-IO.
//!
//! A browser page on another origin than the gateway (the web app at `https://app.example.com`,
//! the gateway at `https://notify.example.com`) may open a WebSocket freely, but may read the
//! reply of its long-poll `fetch` only if the answer carries `Access-Control-Allow-Origin`. The
//! token travels in the body, never in a cookie, so allowing an origin gives it nothing a
//! script could not already send; the list exists so an operator can keep other sites' pages
//! from using the gateway's capacity.

/// The origins allowed to read long-poll answers (`--longpoll-allow-origin`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// No CORS headers: only same-origin pages (and non-browser clients) read answers.
    #[default]
    None,
    /// `*`: any origin.
    Any,
    /// These origins exactly (`scheme://host[:port]`, as browsers send them).
    List(Vec<String>),
}

/// What one request's `Origin` was granted: an index into [`AllowedOrigins`], kept in two bytes
/// beside a waiting poll instead of the origin's text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grant(u16);

impl Grant {
    /// Nothing granted: no CORS headers.
    pub const NONE: Grant = Grant(0);
}

/// The most origins a list may hold (a [`Grant`] is two bytes).
pub const MAX_ORIGINS: usize = u16::MAX as usize - 2;

impl AllowedOrigins {
    /// Reads the flag's values: `*` alone, or origins like `https://app.example.com` (a scheme,
    /// `://`, a host and optional port, no path, no trailing slash). Empty: [`AllowedOrigins::None`].
    pub fn parse(specs: &[String]) -> Result<AllowedOrigins, String> {
        let specs: Vec<&str> = specs
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        match specs.as_slice() {
            [] => Ok(AllowedOrigins::None),
            ["*"] => Ok(AllowedOrigins::Any),
            _ if specs.contains(&"*") => Err("`*` allows every origin: give it alone".into()),
            _ if specs.len() > MAX_ORIGINS => Err(format!("at most {MAX_ORIGINS} origins")),
            _ => {
                for s in &specs {
                    let rest = s
                        .strip_prefix("https://")
                        .or_else(|| s.strip_prefix("http://"))
                        .ok_or_else(|| {
                            format!("origin {s:?} must start with https:// or http://")
                        })?;
                    if rest.is_empty()
                        || rest.contains('/')
                        || !rest.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(format!(
                            "origin {s:?} must be scheme://host[:port], with no path or trailing slash"
                        ));
                    }
                }
                Ok(AllowedOrigins::List(
                    specs.iter().map(|s| s.to_ascii_lowercase()).collect(),
                ))
            }
        }
    }

    /// What a request with this `Origin` header value (if any) is granted.
    #[must_use]
    pub fn grant(&self, origin: Option<&[u8]>) -> Grant {
        match (self, origin) {
            (AllowedOrigins::None, _) | (_, None) => Grant::NONE,
            (AllowedOrigins::Any, Some(_)) => Grant(1),
            (AllowedOrigins::List(list), Some(origin)) => list
                .iter()
                .position(|o| o.as_bytes().eq_ignore_ascii_case(origin.trim_ascii()))
                .map_or(Grant::NONE, |i| Grant(i as u16 + 2)),
        }
    }

    /// The headers an answer carries for `grant` (none for [`Grant::NONE`]): the allowed origin,
    /// `Retry-After` readable by the page, and `Vary: Origin` when the answer depends on it.
    #[must_use]
    pub fn headers(&self, grant: Grant) -> Vec<(&'static str, &str)> {
        let origin = match (self, grant.0) {
            (_, 0) | (AllowedOrigins::None, _) => return Vec::new(),
            (AllowedOrigins::Any, _) => "*",
            (AllowedOrigins::List(list), i) => match list.get(usize::from(i) - 2) {
                Some(o) => o.as_str(),
                None => return Vec::new(),
            },
        };
        let mut headers = vec![
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Expose-Headers", "Retry-After"),
        ];
        if matches!(self, AllowedOrigins::List(_)) {
            headers.push(("Vary", "Origin"));
        }
        headers
    }

    /// The extra headers of a preflight (`OPTIONS`) answer for `grant`: the above, plus the
    /// method and request header a long-poll may use, cached for ten minutes.
    #[must_use]
    pub fn preflight_headers(&self, grant: Grant) -> Vec<(&'static str, &str)> {
        let mut headers = self.headers(grant);
        if !headers.is_empty() {
            headers.extend([
                ("Access-Control-Allow-Methods", "POST"),
                ("Access-Control-Allow-Headers", "content-type"),
                ("Access-Control-Max-Age", "600"),
            ]);
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(specs: &[&str]) -> Result<AllowedOrigins, String> {
        AllowedOrigins::parse(&specs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_parse_and_refuse_what_a_browser_never_sends() {
        assert_eq!(list(&[]), Ok(AllowedOrigins::None));
        assert_eq!(list(&["*"]), Ok(AllowedOrigins::Any));
        assert_eq!(
            list(&["https://App.example.com", " http://localhost:3000 "]),
            Ok(AllowedOrigins::List(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into()
            ]))
        );
        for bad in [
            &["*", "https://a.example"][..],
            &["app.example.com"],
            &["https://app.example.com/"],
            &["https://"],
            &["https://a b"],
        ] {
            assert!(list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_listed_origins_get_headers() {
        let origins = list(&["https://a.example", "https://b.example"]).unwrap();
        let b = origins.grant(Some(b"https://B.example"));
        assert_eq!(
            origins.headers(b),
            vec![
                ("Access-Control-Allow-Origin", "https://b.example"),
                ("Access-Control-Expose-Headers", "Retry-After"),
                ("Vary", "Origin"),
            ]
        );
        assert_eq!(origins.grant(Some(b"https://evil.example")), Grant::NONE);
        assert_eq!(origins.grant(None), Grant::NONE);
        assert!(origins.headers(Grant::NONE).is_empty());
        let any = AllowedOrigins::Any;
        let g = any.grant(Some(b"https://whoever.example"));
        assert_eq!(any.headers(g)[0], ("Access-Control-Allow-Origin", "*"));
        assert_eq!(any.preflight_headers(g).len(), 5);
        assert!(AllowedOrigins::None.headers(g).is_empty());
        assert_eq!(
            AllowedOrigins::None.grant(Some(b"https://a.example")),
            Grant::NONE
        );
    }
}
