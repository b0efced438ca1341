//! The HTTP long-poll bodies (PROTOCOL.md "Transports", C16), sans-IO: the request a client
//! sends to `POST /v1/longpoll`, the 200 reply, and the JSON error body of a refusal. Numbers
//! follow the big-number rule of [`crate::json`]. The HTTP head around them is [`crate::http`].

use crate::json;
use serde_json::{Map, Value};

/// The long-poll endpoint.
pub const PATH: &str = "/v1/longpoll";
/// Largest request body accepted (a body announcing more gets 400 before it is read).
pub const MAX_BODY: usize = 64 * 1024;
/// Shortest `timeout_s` accepted, and the default.
pub const MIN_TIMEOUT_S: u64 = 30;
/// Longest `timeout_s` accepted.
pub const MAX_TIMEOUT_S: u64 = 480;

/// A long-poll request body: `{"token", "cursors": {ns: sjid}, "timeout_s"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The JWT.
    pub token: String,
    /// `(ns, cursor)`, in the body's order.
    pub cursors: Vec<(u64, u64)>,
    /// How long to wait for a change, seconds ([`MIN_TIMEOUT_S`]..=[`MAX_TIMEOUT_S`]).
    pub timeout_s: u64,
}

impl Request {
    /// Parses a request body; unknown fields are ignored. The error says what is wrong, for the
    /// `message` of a 400.
    pub fn parse(body: &[u8]) -> Result<Request, String> {
        let v: Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        let obj = v.as_object().ok_or("body must be a JSON object")?;
        let token = obj
            .get("token")
            .and_then(Value::as_str)
            .ok_or("\"token\" must be a string")?
            .to_owned();
        let cursors = obj
            .get("cursors")
            .and_then(Value::as_object)
            .ok_or("\"cursors\" must be an object of namespace → SJID")?;
        if cursors.is_empty() {
            return Err("\"cursors\" must not be empty".into());
        }
        let cursors = cursors
            .iter()
            .map(|(k, v)| {
                let ns = crate::claims::parse_decimal(k)
                    .ok_or_else(|| format!("cursor key {k:?} is not a decimal namespace id"))?;
                let sjid = json::read_u64(v).ok_or_else(|| {
                    format!("cursor of {k} must be an integer up to 2^53 or a decimal string")
                })?;
                Ok((ns, sjid))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let timeout_s = match obj.get("timeout_s") {
            None => MIN_TIMEOUT_S,
            Some(t) => t
                .as_u64()
                .filter(|t| (MIN_TIMEOUT_S..=MAX_TIMEOUT_S).contains(t))
                .ok_or_else(|| {
                    format!(
                        "\"timeout_s\" must be an integer from {MIN_TIMEOUT_S} to {MAX_TIMEOUT_S}"
                    )
                })?,
        };
        Ok(Request {
            token,
            cursors,
            timeout_s,
        })
    }

    /// The request body. A namespace listed twice keeps its last cursor (a JSON object has one
    /// value per key).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let cursors: Map<String, Value> = self
            .cursors
            .iter()
            .map(|&(ns, sjid)| (ns.to_string(), json::value_of(sjid)))
            .collect();
        let mut body = Map::new();
        body.insert("token".into(), Value::from(self.token.as_str()));
        body.insert("cursors".into(), Value::Object(cursors));
        body.insert("timeout_s".into(), Value::from(self.timeout_s));
        Value::Object(body).to_string().into_bytes()
    }
}

/// The 200 reply to a poll: `{"changes": [{ns, sjid}], "reset": [ns], "backoff_s": n|null}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// `(ns, sjid)`: namespaces whose latest SJID is above the cursor sent.
    pub changes: Vec<(u64, u64)>,
    /// Namespaces whose cursor is ahead of the server: resync them.
    pub reset: Vec<u64>,
    /// Seconds to wait before the next poll, when the server asks for it.
    pub backoff_s: Option<u64>,
}

impl Reply {
    /// The reply body, with the changes merged per namespace (highest SJID: merge is max) and
    /// sorted by namespace; written directly, as the gateway answers every waiting poll with it.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut changes = self.changes.clone();
        changes.sort_unstable();
        changes.reverse();
        changes.dedup_by_key(|c| c.0);
        changes.reverse();
        let mut out = String::with_capacity(48 + changes.len() * 32 + self.reset.len() * 12);
        out.push_str("{\"changes\":[");
        for (i, &(ns, sjid)) in changes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"ns\":");
            json::write_u64(&mut out, ns);
            out.push_str(",\"sjid\":");
            json::write_u64(&mut out, sjid);
            out.push('}');
        }
        out.push_str("],\"reset\":[");
        for (i, &ns) in self.reset.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json::write_u64(&mut out, ns);
        }
        out.push_str("],\"backoff_s\":");
        match self.backoff_s {
            Some(s) => json::write_u64(&mut out, s),
            None => out.push_str("null"),
        }
        out.push('}');
        out
    }

    /// Parses a 200 reply body. `changes` and `reset` are required; a `backoff_s` that is absent,
    /// `null` or not a non-negative integer means none.
    pub fn parse(body: &[u8]) -> Result<Reply, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        let list = |name: &str| {
            v.get(name)
                .and_then(Value::as_array)
                .ok_or_else(|| format!("no \"{name}\" array"))
        };
        let changes = list("changes")?
            .iter()
            .map(|c| {
                let ns = c.get("ns").and_then(json::read_u64);
                let sjid = c.get("sjid").and_then(json::read_u64);
                ns.zip(sjid)
                    .ok_or_else(|| format!("bad entry in \"changes\": {c}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let reset = list("reset")?
            .iter()
            .map(|n| json::read_u64(n).ok_or_else(|| format!("bad entry in \"reset\": {n}")))
            .collect::<Result<Vec<_>, _>>()?;
        // Advisory: anything but a non-negative integer means "no backoff asked" (the corpus
        // pins this for every client).
        let backoff_s = v.get("backoff_s").and_then(Value::as_u64);
        Ok(Reply {
            changes,
            reset,
            backoff_s,
        })
    }
}

/// The `error` of a refused poll (PROTOCOL.md C16), with its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorName {
    /// 400: the body or head is malformed, or over a limit.
    BadRequest,
    /// 401: the token is invalid.
    Unauthorized,
    /// 401: the token has expired: get a fresh one.
    TokenExpired,
    /// 403: the token does not grant some namespaces (listed in `namespaces`).
    ForbiddenNamespace,
    /// 429 or 503: over a cap or draining: retry after `Retry-After`.
    Overloaded,
}

impl ErrorName {
    /// Every name, for tests and documentation.
    pub const ALL: [ErrorName; 5] = [
        ErrorName::BadRequest,
        ErrorName::Unauthorized,
        ErrorName::TokenExpired,
        ErrorName::ForbiddenNamespace,
        ErrorName::Overloaded,
    ];

    /// The name on the wire.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorName::BadRequest => "bad_request",
            ErrorName::Unauthorized => "unauthorized",
            ErrorName::TokenExpired => "token_expired",
            ErrorName::ForbiddenNamespace => "forbidden_namespace",
            ErrorName::Overloaded => "overloaded",
        }
    }

    /// The name a wire string stands for, if it is one of the documented ones.
    #[must_use]
    pub fn from_wire(s: &str) -> Option<ErrorName> {
        ErrorName::ALL.into_iter().find(|n| n.as_str() == s)
    }
}

impl std::fmt::Display for ErrorName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of a refused poll: `{"error", "message", "namespaces"?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// The `error` as sent (one of [`ErrorName`] from a Herald gateway; kept as text so a client
    /// can report a name it does not know).
    pub error: String,
    /// The human-readable `message`.
    pub message: String,
    /// The refused namespaces (403), else empty.
    pub namespaces: Vec<u64>,
}

impl ErrorBody {
    /// The body; `namespaces` only when there are some.
    #[must_use]
    pub fn encode(name: ErrorName, message: &str, namespaces: &[u64]) -> String {
        let mut body = Map::new();
        body.insert("error".into(), Value::from(name.as_str()));
        body.insert("message".into(), Value::from(message));
        if !namespaces.is_empty() {
            let list = namespaces.iter().map(|&n| json::value_of(n)).collect();
            body.insert("namespaces".into(), Value::Array(list));
        }
        Value::Object(body).to_string()
    }

    /// Reads an error body leniently: a proxy in front of the gateway may answer with anything,
    /// so a body that is not Herald's JSON gives an empty `error` and the text as `message`.
    #[must_use]
    pub fn parse_lenient(body: &[u8]) -> ErrorBody {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let text = |name: &str| v.get(name).and_then(Value::as_str).map(str::to_owned);
        match text("error") {
            Some(error) => ErrorBody {
                error,
                message: text("message").unwrap_or_default(),
                namespaces: v
                    .get("namespaces")
                    .and_then(Value::as_array)
                    .map(|l| l.iter().filter_map(json::read_u64).collect())
                    .unwrap_or_default(),
            },
            None => ErrorBody {
                error: String::new(),
                message: String::from_utf8_lossy(body).trim().to_owned(),
                namespaces: Vec::new(),
            },
        }
    }

    /// The documented name, if `error` is one.
    #[must_use]
    pub fn name(&self) -> Option<ErrorName> {
        ErrorName::from_wire(&self.error)
    }
}

#[cfg(test)]
mod tests;
