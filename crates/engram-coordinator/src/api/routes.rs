//! Every route of the public API with the access it needs, in one table:
//! the router is built from it and the API-key layer reads it, so a new
//! route cannot be added without saying who may call it (and
//! `tests/security.rs` walks the same table).

use axum::http::Method;
use axum::routing::{MethodRouter, delete, get, post};

use super::handlers;
use crate::service::Engram;

/// What a caller needs for a route when keys are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health probes and the decision page's static HTML (the page
    /// asks for a key before it reads anything).
    Open,
    /// The read-only key or the full key: reads, search, classify, embed.
    Read,
    /// Only the full key: writes and administration.
    Write,
}

/// One route of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicRoute {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

type Handler = MethodRouter<Engram>;

/// The routes with their handlers.
pub(super) fn table() -> Vec<(PublicRoute, Handler)> {
    use Access::*;
    let routes: Vec<(&'static str, &'static str, Access, Handler)> = vec![
        (
            "POST",
            "/v1/collections",
            Write,
            post(handlers::create_collection),
        ),
        (
            "GET",
            "/v1/collections",
            Read,
            get(handlers::list_collections),
        ),
        (
            "GET",
            "/v1/collections/{collection}",
            Read,
            get(handlers::get_collection),
        ),
        (
            "DELETE",
            "/v1/collections/{collection}",
            Write,
            delete(handlers::delete_collection),
        ),
        (
            "POST",
            "/v1/collections/{collection}/items",
            Write,
            post(handlers::add_items),
        ),
        (
            "POST",
            "/v1/collections/{collection}/items/delete",
            Write,
            post(handlers::delete_items),
        ),
        (
            "GET",
            "/v1/collections/{collection}/items/{id}",
            Read,
            get(handlers::get_item),
        ),
        (
            "POST",
            "/v1/collections/{collection}/search",
            Read,
            post(handlers::search),
        ),
        (
            "POST",
            "/v1/collections/{collection}/classify",
            Read,
            post(handlers::classify),
        ),
        (
            "POST",
            "/v1/collections/{collection}/classify/batch",
            Read,
            post(handlers::classify_batch),
        ),
        (
            "POST",
            "/v1/collections/{collection}/embed",
            Read,
            post(handlers::embed),
        ),
        (
            "POST",
            "/v1/collections/{collection}/compact",
            Write,
            post(handlers::compact),
        ),
        (
            "POST",
            "/v1/collections/{collection}/reshard",
            Write,
            post(handlers::reshard),
        ),
        (
            "POST",
            "/v1/collections/{collection}/interventions",
            Write,
            post(handlers::intervene),
        ),
        (
            "GET",
            "/v1/collections/{collection}/interventions",
            Read,
            get(handlers::curation),
        ),
        (
            "GET",
            "/v1/collections/{collection}/pruning",
            Read,
            get(handlers::pruning),
        ),
        (
            "DELETE",
            "/v1/collections/{collection}/pruning",
            Write,
            delete(handlers::clear_pruning),
        ),
        (
            "GET",
            "/v1/collections/{collection}/unlearning/{receipt}",
            Read,
            get(handlers::unlearning),
        ),
        (
            "POST",
            "/v1/collections/{collection}/jobs",
            Write,
            post(handlers::start_job),
        ),
        (
            "GET",
            "/v1/collections/{collection}/jobs",
            Read,
            get(handlers::jobs),
        ),
        (
            "GET",
            "/v1/collections/{collection}/jobs/{job}",
            Read,
            get(handlers::job),
        ),
        (
            "POST",
            "/v1/collections/{collection}/jobs/{job}/cancel",
            Write,
            post(handlers::cancel_job),
        ),
        (
            "POST",
            "/v1/collections/{collection}/jobs/{job}/resume",
            Write,
            post(handlers::resume_job),
        ),
        ("GET", "/v1/cluster", Read, get(handlers::cluster_status)),
        (
            "POST",
            "/v1/cluster/coordinators",
            Write,
            post(handlers::add_coordinator),
        ),
        (
            "DELETE",
            "/v1/cluster/coordinators/{id}",
            Write,
            delete(handlers::remove_coordinator),
        ),
        (
            "POST",
            "/v1/snapshots",
            Write,
            post(handlers::create_snapshot),
        ),
        ("GET", "/v1/snapshots", Read, get(handlers::list_snapshots)),
        (
            "POST",
            "/v1/snapshots/restore",
            Write,
            post(handlers::restore_snapshot),
        ),
        (
            "GET",
            "/v1/cluster/rebalance",
            Read,
            get(handlers::rebalance_plan),
        ),
        (
            "POST",
            "/v1/cluster/moves",
            Write,
            post(handlers::move_copy),
        ),
        ("GET", "/v1/openapi.json", Read, get(handlers::openapi)),
        ("GET", "/", Open, get(handlers::to_page)),
        ("GET", "/ui", Open, get(handlers::page)),
        ("GET", "/metrics", Read, get(handlers::metrics)),
        ("GET", "/healthz", Open, get(handlers::healthz)),
        ("GET", "/readyz", Open, get(handlers::readyz)),
    ];
    routes
        .into_iter()
        .map(|(method, path, access, handler)| {
            (
                PublicRoute {
                    method,
                    path,
                    access,
                },
                handler,
            )
        })
        .collect()
}

/// Every route of the public API (method, path pattern, access).
pub fn public_routes() -> Vec<PublicRoute> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The access `method` on the matched `path` needs; a request that matched
/// no route (404, 405) needs a key of either kind, so that a caller without
/// one learns nothing about which routes exist.
pub(super) fn access_of(routes: &[PublicRoute], method: &Method, path: Option<&str>) -> Access {
    let method = if *method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    path.and_then(|path| {
        routes
            .iter()
            .find(|r| r.path == path && r.method == method)
            .map(|r| r.access)
    })
    .unwrap_or(Access::Read)
}
