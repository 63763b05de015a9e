//! The one reading of `Authorization: Bearer <token>` every door uses
//! (gRPC metadata and HTTP headers alike).
//!
//! A request must carry exactly one `Authorization` field: with two (say
//! one right and one wrong token, in either order) it is unclear which
//! credential the client meant, and a proxy or library in between may
//! have added or kept either, so the request is refused as ambiguous
//! instead of picking one. The scheme is matched without regard to case,
//! and the token is what follows it, trimmed of surrounding whitespace.

use http::HeaderMap;

/// Why a request's credential could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BearerError {
    #[error("ambiguous credentials: the request carries more than one of them (send exactly one Authorization: Bearer <token>)")]
    Ambiguous,
    #[error("authorization must be \"Bearer <token>\"")]
    Malformed,
}

/// The bearer token of the `Authorization` field values `fields`: `None`
/// without any, an error for more than one or one that is not
/// `Bearer <token>`.
pub(crate) fn parse_bearer<'a>(
    fields: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<&'a [u8]>, BearerError> {
    let Some(value) = one(fields)? else {
        return Ok(None);
    };
    let value = value.trim_ascii();
    let split = value
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .ok_or(BearerError::Malformed)?;
    let (scheme, rest) = value.split_at(split);
    let token = rest.trim_ascii();
    let single_word = !token.iter().any(u8::is_ascii_whitespace);
    if scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty() && single_word {
        Ok(Some(token))
    } else {
        Err(BearerError::Malformed)
    }
}

/// The bearer token of an HTTP request's headers; see [`parse_bearer`].
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<Option<&[u8]>, BearerError> {
    parse_bearer(
        headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .map(http::HeaderValue::as_bytes),
    )
}

/// The value of header `name`, which must not appear more than once (a
/// credential in it would be ambiguous otherwise). Empty values count as
/// absent.
pub(crate) fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a [u8]>, BearerError> {
    one(headers
        .get_all(name)
        .iter()
        .map(http::HeaderValue::as_bytes)
        .filter(|v| !v.is_empty()))
}

/// The bearer token of `Authorization`, or else of a WebSocket subprotocol
/// `<prefix><encoded token>`, decoded by `decode` (the Kubernetes
/// convention, base64url, for clients that cannot set headers: browsers).
/// Credentials in both places, or in two subprotocols, are ambiguous; one
/// `decode` refuses is malformed.
pub(crate) fn bearer_or_subprotocol(
    headers: &HeaderMap,
    prefix: &str,
    decode: impl FnOnce(&str) -> Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, BearerError> {
    let header = bearer_token(headers)?;
    let offered = one(headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|p| p.trim().strip_prefix(prefix)))?;
    match (header, offered) {
        (Some(_), Some(_)) => Err(BearerError::Ambiguous),
        (Some(token), None) => Ok(Some(token.to_vec())),
        (None, Some(encoded)) => decode(encoded).map(Some).ok_or(BearerError::Malformed),
        (None, None) => Ok(None),
    }
}

/// The only item of `items`, if any; more than one is ambiguous.
fn one<T>(items: impl IntoIterator<Item = T>) -> Result<Option<T>, BearerError> {
    let mut items = items.into_iter();
    let first = items.next();
    if items.next().is_some() {
        return Err(BearerError::Ambiguous);
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn one_bearer_field_any_case_trimmed() {
        for value in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "  Bearer   s3cret  ",
            "Bearer\ts3cret",
        ] {
            let h = headers(&[("authorization", value)]);
            assert_eq!(bearer_token(&h), Ok(Some(&b"s3cret"[..])), "{value:?}");
        }
        assert_eq!(bearer_token(&HeaderMap::new()), Ok(None));
        for bad in [
            "s3cret",
            "Bearer",
            "Bearer ",
            "Basic czNjcmV0",
            "Bearer a b",
            "Bearers3cret",
        ] {
            let h = headers(&[("authorization", bad)]);
            assert_eq!(bearer_token(&h), Err(BearerError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn two_authorization_fields_are_ambiguous_in_either_order() {
        for pair in [
            ["Bearer right", "Bearer wrong"],
            ["Bearer wrong", "Bearer right"],
        ] {
            let h = headers(&[("authorization", pair[0]), ("Authorization", pair[1])]);
            assert_eq!(bearer_token(&h), Err(BearerError::Ambiguous));
        }
        let h = headers(&[
            ("authorization", "Bearer same"),
            ("authorization", "Bearer same"),
        ]);
        assert_eq!(bearer_token(&h), Err(BearerError::Ambiguous));
        let h = headers(&[("x-auth", "a"), ("x-auth", "b")]);
        assert_eq!(single_header(&h, "x-auth"), Err(BearerError::Ambiguous));
        let h = headers(&[("x-auth", "a")]);
        assert_eq!(single_header(&h, "x-auth"), Ok(Some(&b"a"[..])));
    }

    #[test]
    fn subprotocol_tokens_are_read_when_alone() {
        use base64::Engine as _;
        const P: &str = "base64url.bearer.authorization.k8s.io.";
        let bearer_or_subprotocol = |h: &HeaderMap, p: &str| {
            super::bearer_or_subprotocol(h, p, |b64| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(b64.trim_end_matches('='))
                    .ok()
            })
        };
        // "s3cret" in base64url, with and without padding.
        for offer in [
            format!("v5.channel.k8s.io, {P}czNjcmV0"),
            format!("{P}czNjcmV0="),
        ] {
            let h = headers(&[("sec-websocket-protocol", &offer)]);
            assert_eq!(
                bearer_or_subprotocol(&h, P),
                Ok(Some(b"s3cret".to_vec())),
                "{offer}"
            );
        }
        let h = headers(&[("authorization", "Bearer s3cret")]);
        assert_eq!(bearer_or_subprotocol(&h, P), Ok(Some(b"s3cret".to_vec())));
        let both = headers(&[
            ("authorization", "Bearer s3cret"),
            ("sec-websocket-protocol", &format!("{P}czNjcmV0")),
        ]);
        assert_eq!(bearer_or_subprotocol(&both, P), Err(BearerError::Ambiguous));
        let two = headers(&[(
            "sec-websocket-protocol",
            &format!("{P}czNjcmV0, {P}b3RoZXI"),
        )]);
        assert_eq!(bearer_or_subprotocol(&two, P), Err(BearerError::Ambiguous));
        let bad = headers(&[("sec-websocket-protocol", &format!("{P}!!"))]);
        assert_eq!(bearer_or_subprotocol(&bad, P), Err(BearerError::Malformed));
        assert_eq!(bearer_or_subprotocol(&HeaderMap::new(), P), Ok(None));
    }
}
