//! The facts of a WebSocket upgrade request handed to the plugin's
//! `authenticate` hook: lower-cased headers, cookies, decoded query, peer
//! address and path.

use std::borrow::Cow;
use std::net::SocketAddr;

use axum::http::{HeaderMap, Uri, header};
use percent_encoding::percent_decode_str;

use crate::runtime::ConnectRequest;

/// Build the [`ConnectRequest`] of an upgrade request.
pub fn connect_request(headers: &HeaderMap, uri: &Uri, remote: SocketAddr) -> ConnectRequest {
    ConnectRequest {
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        cookies: headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| parse_cookies(&String::from_utf8_lossy(v.as_bytes())))
            .collect(),
        query: uri.query().map(parse_query).unwrap_or_default(),
        remote_address: remote.to_string(),
        path: uri.path().to_owned(),
    }
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Parse a `cookie` header value: `a=1; b="2"` → `[(a, 1), (b, 2)]`.
/// Values are percent-decoded; pairs without `=` or with an empty name are skipped.
pub fn parse_cookies(header: &str) -> Vec<(String, String)> {
    header
        .split(';')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            let name = name.trim();
            if name.is_empty() {
                return None;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            Some((name.to_owned(), decode(value)))
        })
        .collect()
}

/// Parse a query string (`application/x-www-form-urlencoded`): `+` is a
/// space, `%XX` is decoded, a key without `=` has an empty value.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let plus = |s: &str| -> String {
                match s.contains('+') {
                    true => decode(&s.replace('+', " ")),
                    false => decode(s),
                }
            };
            (plus(k), plus(v))
        })
        .collect()
}

/// `s` cut to at most `max` bytes on a char boundary (close reasons are
/// limited to 123 bytes).
pub fn truncate_utf8(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(s[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn request_facts() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Custom", HeaderValue::from_static("Yes"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("sid=abc%20d; theme=\"dark\""),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("x=1"));
        let uri: Uri = "/t/acme/ws?user=bob+smith&tag=a%26b&flag&=v&&x=%E2%9C%93"
            .parse()
            .unwrap();
        let addr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let req = connect_request(&headers, &uri, addr);
        assert!(req.headers.contains(&("x-custom".into(), "Yes".into())));
        assert_eq!(
            req.cookies,
            pairs(&[("sid", "abc d"), ("theme", "dark"), ("x", "1")])
        );
        assert_eq!(
            req.query,
            pairs(&[
                ("user", "bob smith"),
                ("tag", "a&b"),
                ("flag", ""),
                ("", "v"),
                ("x", "✓")
            ])
        );
        assert_eq!(req.remote_address, "10.0.0.1:5000");
        assert_eq!(req.path, "/t/acme/ws");
    }

    #[test]
    fn cookie_edge_cases() {
        assert_eq!(parse_cookies(""), pairs(&[]));
        assert_eq!(parse_cookies("novalue; =x; a=b=c"), pairs(&[("a", "b=c")]));
        assert_eq!(parse_cookies("bad=%ZZ"), pairs(&[("bad", "%ZZ")]));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_utf8("abc", 5), "abc");
        assert_eq!(truncate_utf8("ééé", 3), "é");
    }
}
