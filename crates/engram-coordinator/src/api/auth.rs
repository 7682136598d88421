//! API keys as a layer in front of every handler: a request without the
//! right key is refused (401, or 403 for the read-only key on a write)
//! before admission or any of its body is read. Keys are compared as
//! SHA-256 digests in constant time, so neither their bytes nor their
//! length leak through timing, and they are never logged. Scoped tokens
//! ([`crate::token`]) are verified here too, and may call only the routes
//! of their collections.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

use super::routes::{Access, PublicRoute};
use crate::error::{ApiError, ErrorCode};
use crate::service::Engram;
use crate::token;
use engram_core::config::SecurityConfig;

/// What the layer holds: the keys' digests and the route table.
pub(super) struct Keys {
    /// `api_key`, then `accepted_api_key` during a rotation.
    full: Vec<[u8; 32]>,
    /// `read_only_api_key`, then `accepted_read_only_api_key`.
    read_only: Vec<[u8; 32]>,
    /// `token_signing_key`: scoped tokens are taken when set.
    token_signing_key: Option<Vec<u8>>,
    routes: Vec<PublicRoute>,
}

/// Who a presented key says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    Full,
    ReadOnly,
    Scoped(token::Claims),
}

/// Why the layer refuses a request.
struct Refusal {
    /// The `reason` label of `engram_auth_refused_total`.
    reason: &'static str,
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(reason: &'static str, code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            code,
            message: message.into(),
        }
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

fn digests(keys: [&Option<String>; 2]) -> Vec<[u8; 32]> {
    keys.into_iter()
        .flatten()
        .map(|key| digest(key.as_bytes()))
        .collect()
}

impl Keys {
    /// `None` when no key is configured: every caller has full access.
    /// `routes` is the table the router was built from.
    pub(super) fn from_config(
        security: &SecurityConfig,
        routes: Vec<PublicRoute>,
    ) -> Option<Arc<Keys>> {
        security.keys_required().then(|| {
            Arc::new(Keys {
                full: digests([&security.api_key, &security.accepted_api_key]),
                read_only: digests([
                    &security.read_only_api_key,
                    &security.accepted_read_only_api_key,
                ]),
                token_signing_key: security
                    .token_signing_key
                    .as_ref()
                    .map(|key| key.as_bytes().to_vec()),
                routes,
            })
        })
    }

    /// Who `presented` says the caller is, or why it is refused.
    fn authenticate(&self, presented: &[u8]) -> Result<Caller, Refusal> {
        if let Some(signing_key) = &self.token_signing_key
            && token::is_token(presented)
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            return match token::verify(presented, signing_key, now) {
                Ok(claims) => Ok(Caller::Scoped(claims)),
                Err(error @ token::TokenError::Expired { .. }) => Err(Refusal::new(
                    "expired",
                    ErrorCode::Unauthenticated,
                    error.to_string(),
                )),
                Err(_) => Err(wrong_key()),
            };
        }
        self.caller(presented).ok_or_else(wrong_key)
    }

    fn caller(&self, presented: &[u8]) -> Option<Caller> {
        let presented = digest(presented);
        // Every key is compared whatever the earlier answers, so the time
        // taken says neither which key was close nor which one matched.
        let any = |keys: &[[u8; 32]]| {
            keys.iter().fold(false, |found, key| {
                found | bool::from(key.as_slice().ct_eq(presented.as_slice()))
            })
        };
        let (full, read_only) = (any(&self.full), any(&self.read_only));
        if full {
            Some(Caller::Full)
        } else if read_only {
            Some(Caller::ReadOnly)
        } else {
            None
        }
    }
}

/// The key a request presents: `Authorization: Bearer <key>` or
/// `api-key: <key>` (Qdrant's header).
fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.as_bytes();
        let scheme = b"bearer ";
        if value.len() > scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(value[scheme.len()..].trim_ascii());
        }
        return Some(b"");
    }
    headers.get("api-key").map(|v| v.as_bytes().trim_ascii())
}

fn wrong_key() -> Refusal {
    Refusal::new(
        "wrong",
        ErrorCode::Unauthenticated,
        "the API key is not valid",
    )
}

/// The `{collection}` segment of `path` under the route pattern `route`.
fn collection_of<'a>(route: &str, path: &'a str) -> Option<&'a str> {
    let at = route.split('/').position(|part| part == "{collection}")?;
    path.split('/').nth(at)
}

/// Whether `caller` may call a route needing `access`: `Ok`, or why not.
fn authorize(
    caller: &Caller,
    access: Access,
    route: Option<&str>,
    path: &str,
) -> Result<(), Refusal> {
    match caller {
        Caller::Full => Ok(()),
        Caller::ReadOnly if access.writes() => Err(Refusal::new(
            "read_only",
            ErrorCode::PermissionDenied,
            "the read-only API key may search, classify, embed and read; this route needs the full key",
        )),
        Caller::ReadOnly => Ok(()),
        Caller::Scoped(claims) => {
            let collection = route.and_then(|route| collection_of(route, path));
            let Some(collection) = collection else {
                return Err(Refusal::new(
                    "out_of_scope",
                    ErrorCode::PermissionDenied,
                    "a scoped token may call only the routes of its collections (/v1/collections/{collection}/...)",
                ));
            };
            if !claims.collections.iter().any(|c| c == collection) {
                return Err(Refusal::new(
                    "out_of_scope",
                    ErrorCode::PermissionDenied,
                    format!("this token is not for collection {collection:?}"),
                ));
            }
            match access {
                Access::Admin => Err(Refusal::new(
                    "out_of_scope",
                    ErrorCode::PermissionDenied,
                    "a scoped token may not administer (delete, compact, reshard): this route needs the full key",
                )),
                Access::Write if !claims.write => Err(Refusal::new(
                    "read_only",
                    ErrorCode::PermissionDenied,
                    "this token may only read; this route writes",
                )),
                _ => Ok(()),
            }
        }
    }
}

pub(super) async fn authenticate(
    State((keys, engram)): State<(Arc<Keys>, Engram)>,
    request: Request,
    next: Next,
) -> Response {
    let route = super::matched_route(&request).map(str::to_string);
    let access = super::routes::access_of(&keys.routes, request.method(), route.as_deref());
    if access == Access::Open {
        return next.run(request).await;
    }
    let checked = match presented_key(request.headers()) {
        None => Err(Refusal::new(
            "missing",
            ErrorCode::Unauthenticated,
            "this server needs an API key: send `Authorization: Bearer <key>` or `api-key: <key>`",
        )),
        Some(key) => keys
            .authenticate(key)
            .and_then(|caller| authorize(&caller, access, route.as_deref(), request.uri().path())),
    };
    let refusal = match checked {
        Ok(()) => return next.run(request).await,
        Err(refusal) => refusal,
    };
    engram.metrics().auth_refused(refusal.reason);
    tracing::warn!(
        method = %request.method(),
        route = route.as_deref().unwrap_or("unmatched"),
        reason = refusal.reason,
        "request refused by the API-key layer"
    );
    let mut response = ApiError::new(refusal.code, refusal.message).into_response();
    if refusal.code == ErrorCode::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::super::routes::public_routes;
    use super::*;

    fn keys() -> Keys {
        let security = SecurityConfig {
            api_key: Some("full-key-0123456789".into()),
            accepted_api_key: Some("old-full-key-0123456789".into()),
            read_only_api_key: Some("read-key-0123456789".into()),
            accepted_read_only_api_key: Some("old-read-key-0123456789".into()),
            token_signing_key: Some("token-signing-key-0123456789".into()),
            ..Default::default()
        };
        security.validate().unwrap();
        Arc::into_inner(Keys::from_config(&security, public_routes()).unwrap()).unwrap()
    }

    #[test]
    fn a_key_is_who_it_says_and_nothing_else() {
        let keys = keys();
        assert_eq!(keys.caller(b"full-key-0123456789"), Some(Caller::Full));
        assert_eq!(keys.caller(b"read-key-0123456789"), Some(Caller::ReadOnly));
        // During a rotation the old keys keep their own access.
        assert_eq!(keys.caller(b"old-full-key-0123456789"), Some(Caller::Full));
        assert_eq!(
            keys.caller(b"old-read-key-0123456789"),
            Some(Caller::ReadOnly)
        );
        for wrong in [
            &b""[..],
            b"full-key-012345678",
            b"full-key-01234567890",
            b"FULL-KEY-0123456789",
            b"old-full-key-012345678",
        ] {
            assert_eq!(keys.caller(wrong), None);
        }
    }

    #[test]
    fn a_scoped_token_reaches_its_collections_only_and_never_administers() {
        let keys = keys();
        let mint = |write: bool, expires: u64| {
            let claims = token::Claims {
                collections: vec!["mine".into()],
                write,
                expires,
            };
            token::sign(&claims, b"token-signing-key-0123456789")
        };
        let later = u64::MAX;
        let check = |token: &str, access: Access, route: &str, path: &str| {
            keys.authenticate(token.as_bytes())
                .and_then(|caller| authorize(&caller, access, Some(route), path))
                .map_err(|refusal| refusal.reason)
        };
        let (reader, writer) = (mint(false, later), mint(true, later));
        let search = "/v1/collections/{collection}/search";
        let items = "/v1/collections/{collection}/items";
        let whole = "/v1/collections/{collection}";
        assert_eq!(
            check(&reader, Access::Read, search, "/v1/collections/mine/search"),
            Ok(())
        );
        assert_eq!(
            check(&reader, Access::Write, items, "/v1/collections/mine/items"),
            Err("read_only")
        );
        assert_eq!(
            check(&writer, Access::Write, items, "/v1/collections/mine/items"),
            Ok(())
        );
        for (access, route, path) in [
            (Access::Read, search, "/v1/collections/other/search"),
            (Access::Read, search, "/v1/collections/mine2/search"),
            (Access::Admin, whole, "/v1/collections/mine"),
            (Access::Read, "/v1/collections", "/v1/collections"),
            (Access::Read, "/metrics", "/metrics"),
        ] {
            assert_eq!(
                check(&writer, access, route, path),
                Err("out_of_scope"),
                "{path}"
            );
        }
        assert_eq!(
            check(
                &mint(true, 1),
                Access::Read,
                search,
                "/v1/collections/mine/search"
            ),
            Err("expired")
        );
        let forged = token::sign(
            &token::Claims {
                collections: vec!["mine".into()],
                write: true,
                expires: later,
            },
            b"not-the-signing-key-0123456789",
        );
        assert_eq!(
            check(&forged, Access::Read, search, "/v1/collections/mine/search"),
            Err("wrong")
        );
    }

    #[test]
    fn both_headers_are_read() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_key(&headers), None);
        headers.insert("api-key", HeaderValue::from_static(" abc "));
        assert_eq!(presented_key(&headers), Some(&b"abc"[..]));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bEaReR xyz"),
        );
        assert_eq!(presented_key(&headers), Some(&b"xyz"[..]));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eHl6"),
        );
        assert_eq!(
            presented_key(&headers),
            Some(&b""[..]),
            "another scheme is no key"
        );
    }

    #[test]
    fn every_route_says_who_may_call_it() {
        use axum::http::Method;
        let routes = public_routes();
        let access = |m: Method, p: &str| super::super::routes::access_of(&routes, &m, Some(p));
        assert_eq!(access(Method::GET, "/healthz"), Access::Open);
        assert_eq!(access(Method::HEAD, "/readyz"), Access::Open);
        assert_eq!(
            access(Method::POST, "/v1/collections/{collection}/search"),
            Access::Read
        );
        assert_eq!(access(Method::GET, "/metrics"), Access::Read);
        assert_eq!(
            access(Method::DELETE, "/v1/collections/{collection}"),
            Access::Admin
        );
        assert_eq!(access(Method::POST, "/v1/snapshots/restore"), Access::Admin);
        assert_eq!(
            super::super::routes::access_of(&routes, &Method::GET, None),
            Access::Read
        );
        // No GET writes and no unlisted method is open.
        for route in &routes {
            if route.method == "GET" {
                assert!(!route.access.writes(), "{route:?}");
            } else {
                assert_ne!(route.access, Access::Open, "{route:?}");
            }
        }
    }
}
