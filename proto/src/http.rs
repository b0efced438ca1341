//! The HTTP/1.1 side of the client listener, sans-IO (PROTOCOL.md "Transports"): the decision
//! on a request head ([`decide`]: the WebSocket upgrade of `GET /v1/connect` per RFC 6455
//! section 4, a `POST /v1/longpoll` whose body to read, or a refusal), and the responses around
//! it (plain-text refusals, long-poll JSON answers).
//!
//! Parsed with `httparse` from the caller's read buffer; nothing is kept once the head is
//! decided, so an upgraded connection carries no HTTP state.

use crate::cors::{AllowedOrigins, Grant};
use crate::longpoll::{self, ErrorBody, ErrorName};
use base64::Engine;
use sha1::{Digest, Sha1};
use std::fmt::Write as _;

/// Largest request head accepted before answering 431.
pub const MAX_HEAD: usize = 8 * 1024;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const MAX_HEADERS: usize = 32;

/// What to do with a request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Switch to WebSocket: send `response` (101), then speak frames. `head_len` bytes were the
    /// request; anything after them is already WebSocket data.
    Upgrade {
        /// The 101 response.
        response: Vec<u8>,
        /// Length of the request head.
        head_len: usize,
    },
    /// A long-poll request (`POST /v1/longpoll`): its body is the `body_len` bytes after the
    /// `head_len` bytes of head (see [`longpoll::Request`]).
    LongPoll {
        /// Length of the request head.
        head_len: usize,
        /// Content-Length of the body (at most [`longpoll::MAX_BODY`]).
        body_len: usize,
        /// HTTP/1.1 without `Connection: close`: keep the connection after the reply.
        keep_alive: bool,
        /// What the request's `Origin` was granted: the answer's CORS headers come from
        /// [`AllowedOrigins::headers`].
        cors: Grant,
    },
    /// A CORS preflight (`OPTIONS /v1/longpoll`): answer `response` (204) and close.
    Preflight {
        /// The whole HTTP response.
        response: Vec<u8>,
    },
    /// Answer with `response` and close.
    Refuse {
        /// Status code, for metrics and logs.
        status: u16,
        /// The whole HTTP response.
        response: Vec<u8>,
    },
}

/// Admission state the listener checks after a valid upgrade (or long-poll) request.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Over the connection cap.
    pub full: bool,
    /// Shutting down.
    pub draining: bool,
    /// Over the handshake rate.
    pub rate_limited: bool,
}

/// Decides on a request head. `None`: incomplete, read more (the caller enforces [`MAX_HEAD`]).
/// `origins` says which web pages may read long-poll answers.
pub fn decide(buf: &[u8], admission: Admission, origins: &AllowedOrigins) -> Option<Decision> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        // A head over the limit is refused even when it arrived whole in one read (C4).
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Some(refuse(431, "request head too large", &[]));
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return Some(refuse(431, "too many headers", &[])),
        Err(_) => return Some(refuse(400, "malformed HTTP request", &[])),
    };
    let path = req.path.unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let method = req.method.unwrap_or("");
    match (method, path) {
        ("GET", "/v1/connect") => {}
        (_, "/v1/connect") => {
            return Some(refuse(
                405,
                "use GET with a WebSocket upgrade",
                &[("Allow", "GET")],
            ));
        }
        ("POST", longpoll::PATH) => {
            return Some(decide_longpoll(&req, head_len, admission, origins));
        }
        ("OPTIONS", longpoll::PATH) => {
            let grant = origins.grant(header_value(&req, "origin"));
            let mut response = String::from("HTTP/1.1 204 No Content\r\n");
            for (name, value) in origins.preflight_headers(grant) {
                let _ = write!(response, "{name}: {value}\r\n");
            }
            response.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
            return Some(Decision::Preflight {
                response: response.into_bytes(),
            });
        }
        (_, longpoll::PATH) => {
            return Some(refuse(405, "use POST", &[("Allow", "POST")]));
        }
        _ => {
            return Some(refuse(
                404,
                "not found; WebSocket clients connect to /v1/connect",
                &[],
            ));
        }
    }
    let headers: &[httparse::Header<'_>] = req.headers;
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|h| {
            std::str::from_utf8(h.value)
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Some(refuse(
            426,
            "this endpoint speaks WebSocket (subprotocol herald.v1)",
            &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
        ));
    }
    if !has_token("sec-websocket-version", "13") {
        return Some(refuse(
            426,
            "WebSocket version 13 required",
            &[("Sec-WebSocket-Version", "13")],
        ));
    }
    let key = header("sec-websocket-key")
        .next()
        .map(|h| h.value.trim_ascii());
    let key_ok = key.is_some_and(|k| {
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .is_ok_and(|raw| raw.len() == 16)
    });
    let Some(key) = key.filter(|_| key_ok) else {
        return Some(refuse(400, "missing or malformed Sec-WebSocket-Key", &[]));
    };
    if !has_token("sec-websocket-protocol", crate::WS_SUBPROTOCOL) {
        return Some(refuse(
            400,
            "the WebSocket subprotocol herald.v1 is required",
            &[],
        ));
    }
    if admission.draining || admission.full {
        let why = if admission.draining {
            "draining"
        } else {
            "overloaded"
        };
        return Some(refuse(503, why, &[("Retry-After", "5")]));
    }
    if admission.rate_limited {
        return Some(refuse(
            503,
            "overloaded: too many new connections",
            &[("Retry-After", "1")],
        ));
    }
    let accept = accept_key(key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
        crate::WS_SUBPROTOCOL
    );
    Some(Decision::Upgrade {
        response: response.into_bytes(),
        head_len,
    })
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2: base64 of
/// the SHA-1 of the key, as sent, followed by the protocol's GUID). The server's upgrade and the
/// load generator's client check use this one function.
#[must_use]
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A client's WebSocket upgrade request for `GET /v1/connect` with subprotocol `herald.v1`:
/// `host` is the `Host` header, `key` the `Sec-WebSocket-Key` (base64 of 16 bytes).
#[must_use]
pub fn upgrade_request(host: &str, key: &str) -> Vec<u8> {
    format!(
        "GET /v1/connect HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
        crate::WS_SUBPROTOCOL
    )
    .into_bytes()
}

/// A server's answer to a WebSocket upgrade, read by a client ([`parse_upgrade_response`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeResponse {
    /// `101 Switching Protocols` with the right `Sec-WebSocket-Accept` and subprotocol: the bytes
    /// after `head_len` are WebSocket frames.
    Switched {
        /// Length of the response head.
        head_len: usize,
    },
    /// Any other status (a 503 of admission control, say), with its `Retry-After` in seconds
    /// when it has one. The server closes the connection after it.
    Refused {
        /// The HTTP status.
        status: u16,
        /// `Retry-After`, seconds.
        retry_after: Option<u64>,
    },
}

/// Why an upgrade response is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Not an HTTP/1.1 response head, or one over [`MAX_HEAD`].
    #[error("malformed HTTP response head")]
    Malformed,
    /// A 101 whose `Sec-WebSocket-Accept` does not match the key.
    #[error("wrong Sec-WebSocket-Accept")]
    BadAccept,
    /// A 101 that did not choose the `herald.v1` subprotocol.
    #[error("subprotocol herald.v1 not chosen")]
    NoSubprotocol,
}

/// Reads a server's response to [`upgrade_request`] from the front of `buf`. `Ok(None)`: the head
/// is not complete yet. `expected_accept` is [`accept_key`] of the key that was sent.
pub fn parse_upgrade_response(
    buf: &[u8],
    expected_accept: &str,
) -> Result<Option<UpgradeResponse>, UpgradeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        _ => return Err(UpgradeError::Malformed),
    };
    let status = resp.code.ok_or(UpgradeError::Malformed)?;
    let value = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if status != 101 {
        let retry_after = value("retry-after").and_then(|v| v.parse().ok());
        return Ok(Some(UpgradeResponse::Refused {
            status,
            retry_after,
        }));
    }
    if value("sec-websocket-accept") != Some(expected_accept) {
        return Err(UpgradeError::BadAccept);
    }
    if !value("sec-websocket-protocol")
        .is_some_and(|p| p.eq_ignore_ascii_case(crate::WS_SUBPROTOCOL))
    {
        return Err(UpgradeError::NoSubprotocol);
    }
    Ok(Some(UpgradeResponse::Switched { head_len }))
}

/// A complete plain-text refusal with `Connection: close`.
#[must_use]
pub fn refuse(status: u16, message: &str, extra: &[(&str, &str)]) -> Decision {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut head =
        format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n");
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(
        head,
        "Content-Length: {}\r\nConnection: close\r\n\r\n{message}\n",
        message.len() + 1
    );
    Decision::Refuse {
        status,
        response: head.into_bytes(),
    }
}

/// Retry-After (seconds) of a long-poll 503 for the connection cap, draining or a failed look-up.
pub const RETRY_AFTER_FULL: &str = "5";
/// Retry-After (seconds) of a long-poll 429 for the handshake rate.
pub const RETRY_AFTER_RATE: &str = "1";

/// The value of header `name` if the request has it once or more (the first).
fn header_value<'b>(req: &httparse::Request<'_, 'b>, name: &str) -> Option<&'b [u8]> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// Decides on a complete `POST /v1/longpoll` head: read its body, or refuse with a JSON error.
fn decide_longpoll(
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    admission: Admission,
    origins: &AllowedOrigins,
) -> Decision {
    let header = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    let cors = origins.grant(header_value(req, "origin"));
    let cors_headers = origins.headers(cors);
    let refuse_json = |status: u16, name: ErrorName, message: &str, extra: &[(&str, &str)]| {
        let mut headers = extra.to_vec();
        headers.extend_from_slice(&cors_headers);
        Decision::Refuse {
            status,
            response: error_response(status, name, message, &headers, &[]),
        }
    };
    let bad = |message: &str| refuse_json(400, ErrorName::BadRequest, message, &[]);
    if header("transfer-encoding").next().is_some() {
        return bad("chunked bodies are not accepted: send Content-Length");
    }
    let mut lengths = header("content-length");
    let body_len = match (lengths.next(), lengths.next()) {
        (Some(h), None) => std::str::from_utf8(h.value)
            .ok()
            .and_then(|v| crate::claims::parse_decimal(v.trim()))
            .and_then(|n| usize::try_from(n).ok()),
        _ => None,
    };
    let Some(body_len) = body_len else {
        return bad("one valid Content-Length is required");
    };
    if body_len > longpoll::MAX_BODY {
        return bad(&format!("body over {} bytes", longpoll::MAX_BODY));
    }
    if admission.draining || admission.full {
        let why = if admission.draining {
            "draining: poll again later"
        } else {
            "over the connection cap: poll again later"
        };
        let extra = [("Retry-After", RETRY_AFTER_FULL)];
        return refuse_json(503, ErrorName::Overloaded, why, &extra);
    }
    if admission.rate_limited {
        let why = "too many new connections: poll again later";
        let extra = [("Retry-After", RETRY_AFTER_RATE)];
        return refuse_json(429, ErrorName::Overloaded, why, &extra);
    }
    let connection_close = header("connection").any(|h| {
        std::str::from_utf8(h.value)
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    });
    Decision::LongPoll {
        head_len,
        body_len,
        keep_alive: req.version == Some(1) && !connection_close,
        cors,
    }
}

/// A long-poll refusal: the JSON [`ErrorBody`] with `Connection: close` (and `extra` headers,
/// such as `Retry-After`).
#[must_use]
pub fn error_response(
    status: u16,
    name: ErrorName,
    message: &str,
    extra: &[(&str, &str)],
    namespaces: &[u64],
) -> Vec<u8> {
    let body = ErrorBody::encode(name, message, namespaces);
    let reason = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n");
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let _ = write!(
        head,
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    head.into_bytes()
}

/// A long-poll 200 answer carrying `body` (a [`longpoll::Reply`]), with `extra` headers (CORS);
/// `keep_alive` chooses the `Connection` header. Never cached by a proxy.
#[must_use]
pub fn ok_response(body: &str, keep_alive: bool, extra: &[(&str, &str)]) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut out = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n",
    );
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(
        out,
        "Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    out.push_str(body);
    out.into_bytes()
}

#[cfg(test)]
mod tests;
