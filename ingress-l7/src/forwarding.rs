//! The forwarding fields: what the ingress tells an endpoint about the request's way to it
//! (`X-Forwarded-For`, `-Proto`, `-Host`, and on Knative routes RFC 7239's `Forwarded`), and
//! which of the client's fields it writes itself rather than passing on. The one list every
//! front (HTTP/1.1, HTTP/2, HTTP/3, pingora's fallback) writes them from. No I/O.
//!
//! `Forwarded` only on Knative routes: Knative's runtime contract requires it (its conformance
//! test `TestMustHaveHeadersSet`), while nginx-ingress and envoy do not add it by default, and an
//! Ingress's endpoints that read `X-Forwarded-*` could be misled by a second field saying it
//! differently; so on Ingress routes a client's `Forwarded` passes through as it came.

use std::net::IpAddr;

/// Request fields the ingress writes itself on every route (the forwarding fields and the
/// request id), so the client's are not passed on as they came.
pub(crate) const SET_BY_INGRESS: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// RFC 7239's field, written on routes that ask for it ([`Forwarding::rfc7239`]).
pub(crate) const FORWARDED: &str = "forwarded";

/// Whether the client's field `name` (any case) is one the ingress writes itself on a route
/// that does (`rfc7239`) or does not write `Forwarded`.
pub(crate) fn set_by_ingress(name: &str, rfc7239: bool) -> bool {
    SET_BY_INGRESS.iter().any(|d| name.eq_ignore_ascii_case(d)) || (rfc7239 && name.eq_ignore_ascii_case(FORWARDED))
}

/// What the forwarding fields say of one request.
pub(crate) struct Forwarding<'a> {
    /// The client's address (`None`: not an IP socket; no `for` then).
    pub client: Option<IpAddr>,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The request's Host (empty: none, and no `X-Forwarded-Host`).
    pub host: &'a str,
    /// Whether `Forwarded` is written too (Knative routes).
    pub rfc7239: bool,
}

/// The values of every field `name` in `headers`, joined by `, ` (none: `None`).
pub(crate) fn joined(headers: &http::HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(", "))
}

impl Forwarding<'_> {
    /// [`Forwarding::each`] for a request whose fields are `headers`: the client's
    /// `X-Forwarded-For` and `Forwarded` read from them, the fields to write returned.
    pub(crate) fn fields_for(&self, headers: &http::HeaderMap) -> Vec<(&'static str, String)> {
        let prior_xff = joined(headers, "x-forwarded-for");
        let prior_forwarded = self.rfc7239.then(|| joined(headers, FORWARDED)).flatten();
        let mut fields = Vec::with_capacity(4);
        self.each(prior_xff.as_deref(), prior_forwarded.as_deref(), |name, value| {
            fields.push((name, value.to_string()))
        });
        fields
    }

    /// The client's fields the ingress replaces on this route, whether or not it sets each now.
    pub(crate) fn replaced(&self) -> impl Iterator<Item = &'static str> {
        SET_BY_INGRESS.into_iter().chain(self.rfc7239.then_some(FORWARDED))
    }

    /// Each forwarding field for the endpoint, in order, as `(name, value)`: the client's
    /// `X-Forwarded-For` and (with [`Forwarding::rfc7239`]) `Forwarded` values, `prior_xff` and
    /// `prior_forwarded` (several fields joined by `, `), get this hop appended as one more
    /// list element.
    pub(crate) fn each(
        &self,
        prior_xff: Option<&str>,
        prior_forwarded: Option<&str>,
        mut set: impl FnMut(&'static str, &str),
    ) {
        if let Some(ip) = self.client {
            match prior_xff.filter(|p| !p.trim().is_empty()) {
                Some(prior) => set("X-Forwarded-For", &format!("{prior}, {ip}")),
                None => set("X-Forwarded-For", &ip.to_string()),
            }
        }
        set("X-Forwarded-Proto", self.scheme);
        if !self.host.is_empty() {
            set("X-Forwarded-Host", self.host);
        }
        if self.rfc7239 {
            let element = forwarded_element(self.client, self.scheme);
            match prior_forwarded.filter(|p| !p.trim().is_empty()) {
                Some(prior) => set("Forwarded", &format!("{prior}, {element}")),
                None => set("Forwarded", &element),
            }
        }
    }
}

/// One `Forwarded` element (RFC 7239 section 4) for this hop: `for=192.0.2.1;proto=http`, an
/// IPv6 address quoted and bracketed as section 6 says (`for="[2001:db8::1]"`).
pub(crate) fn forwarded_element(client: Option<IpAddr>, scheme: &str) -> String {
    match client {
        Some(IpAddr::V4(ip)) => format!("for={ip};proto={scheme}"),
        Some(IpAddr::V6(ip)) => format!("for=\"[{ip}]\";proto={scheme}"),
        None => format!("proto={scheme}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(f: &Forwarding<'_>, xff: Option<&str>, fwd: Option<&str>) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        f.each(xff, fwd, |n, v| out.push((n, v.to_string())));
        out
    }

    #[test]
    fn forwarded_is_written_on_knative_routes_and_appended_to() {
        let mut f = Forwarding {
            client: Some("127.0.0.1".parse().unwrap()),
            scheme: "http",
            host: "hello.example.com",
            rfc7239: true,
        };
        assert_eq!(
            fields(&f, None, None),
            [
                ("X-Forwarded-For", "127.0.0.1".to_string()),
                ("X-Forwarded-Proto", "http".to_string()),
                ("X-Forwarded-Host", "hello.example.com".to_string()),
                ("Forwarded", "for=127.0.0.1;proto=http".to_string()),
            ]
        );
        let got = fields(&f, Some("10.0.0.1"), Some("for=10.0.0.1;proto=https"));
        assert_eq!(got[0].1, "10.0.0.1, 127.0.0.1");
        assert_eq!(got[3].1, "for=10.0.0.1;proto=https, for=127.0.0.1;proto=http");
        f.rfc7239 = false;
        assert!(
            fields(&f, None, Some("for=10.0.0.1"))
                .iter()
                .all(|(n, _)| *n != "Forwarded")
        );
    }

    #[test]
    fn an_ipv6_client_is_quoted_and_bracketed() {
        assert_eq!(
            forwarded_element(Some("2001:db8::1".parse().unwrap()), "https"),
            "for=\"[2001:db8::1]\";proto=https"
        );
        assert_eq!(forwarded_element(None, "http"), "proto=http");
    }

    #[test]
    fn the_client_forwarded_is_replaced_only_where_the_route_writes_it() {
        assert!(set_by_ingress("X-Forwarded-For", false));
        assert!(!set_by_ingress("Forwarded", false));
        assert!(set_by_ingress("FORWARDED", true));
        assert!(!set_by_ingress("accept", true));
    }
}
