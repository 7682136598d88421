//! Every route of the public API with the access it needs, in one table:
//! the router is built from it and the API-key layer reads it, so a new
//! route cannot be added without saying who may call it (and
//! `tests/security.rs` walks the same table).

use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter, on};

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
    /// The full key, or a scoped token with write access to the route's
    /// collection: writing items, curation, jobs.
    Write,
    /// Only the full key: administration (collections created and
    /// deleted, compaction, resharding, the cluster, snapshots).
    Admin,
}

impl Access {
    /// Whether the route changes anything (the read-only key is refused).
    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::Admin)
    }
}

/// One route of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicRoute {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

type Handler = MethodRouter<Engram>;

/// The routes with their handlers, one per line.
#[rustfmt::skip]
pub(super) fn table() -> Vec<(PublicRoute, Handler)> {
    use Access::*;
    vec![
        route("POST", "/v1/collections", Admin, handlers::create_collection),
        route("GET", "/v1/collections", Read, handlers::list_collections),
        route("GET", "/v1/collections/{collection}", Read, handlers::get_collection),
        route("DELETE", "/v1/collections/{collection}", Admin, handlers::delete_collection),
        route("POST", "/v1/collections/{collection}/items", Write, handlers::add_items),
        route("POST", "/v1/collections/{collection}/items/delete", Write, handlers::delete_items),
        route("GET", "/v1/collections/{collection}/items/{id}", Read, handlers::get_item),
        route("GET", "/v1/collections/{collection}/items/{id}/thumbnail", Read, handlers::thumbnail),
        route("POST", "/v1/collections/{collection}/search", Read, handlers::search),
        route("POST", "/v1/collections/{collection}/classify", Read, handlers::classify),
        route("POST", "/v1/collections/{collection}/classify/batch", Read, handlers::classify_batch),
        route("POST", "/v1/collections/{collection}/embed", Read, handlers::embed),
        route("POST", "/v1/collections/{collection}/compact", Admin, handlers::compact),
        route("POST", "/v1/collections/{collection}/reshard", Admin, handlers::reshard),
        route("POST", "/v1/collections/{collection}/interventions", Write, handlers::intervene),
        route("GET", "/v1/collections/{collection}/interventions", Read, handlers::curation),
        route("GET", "/v1/collections/{collection}/pruning", Read, handlers::pruning),
        route("DELETE", "/v1/collections/{collection}/pruning", Write, handlers::clear_pruning),
        route("GET", "/v1/collections/{collection}/unlearning", Read, handlers::unlearning_list),
        route("GET", "/v1/collections/{collection}/unlearning/{receipt}", Read, handlers::unlearning),
        route("POST", "/v1/collections/{collection}/unlearning/{receipt}/erase", Admin, handlers::erase_now),
        route("POST", "/v1/collections/{collection}/jobs", Write, handlers::start_job),
        route("GET", "/v1/collections/{collection}/jobs", Read, handlers::jobs),
        route("GET", "/v1/collections/{collection}/jobs/{job}", Read, handlers::job),
        route("POST", "/v1/collections/{collection}/jobs/{job}/cancel", Write, handlers::cancel_job),
        route("POST", "/v1/collections/{collection}/jobs/{job}/resume", Write, handlers::resume_job),
        route("GET", "/v1/cluster", Read, handlers::cluster_status),
        route("POST", "/v1/cluster/coordinators", Admin, handlers::add_coordinator),
        route("DELETE", "/v1/cluster/coordinators/{id}", Admin, handlers::remove_coordinator),
        route("POST", "/v1/snapshots", Admin, handlers::create_snapshot),
        route("GET", "/v1/snapshots", Read, handlers::list_snapshots),
        route("POST", "/v1/snapshots/restore", Admin, handlers::restore_snapshot),
        route("GET", "/v1/cluster/rebalance", Read, handlers::rebalance_plan),
        route("POST", "/v1/cluster/moves", Admin, handlers::move_copy),
        route("GET", "/v1/openapi.json", Read, handlers::openapi),
        route("GET", "/", Open, handlers::to_page),
        route("GET", "/ui", Open, handlers::page),
        route("GET", "/metrics", Read, handlers::metrics),
        route("GET", "/healthz", Open, handlers::healthz),
        route("GET", "/readyz", Open, handlers::readyz),
    ]
}

/// One row of the table: the method is named once, for both the router
/// and the key layer.
fn route<H, T>(
    method: &'static str,
    path: &'static str,
    access: Access,
    handler: H,
) -> (PublicRoute, Handler)
where
    H: axum::handler::Handler<T, Engram>,
    T: 'static,
{
    let filter = Method::from_bytes(method.as_bytes())
        .ok()
        .and_then(|m| MethodFilter::try_from(m).ok())
        .unwrap_or_else(|| panic!("the route table names an unknown method {method}"));
    (
        PublicRoute {
            method,
            path,
            access,
        },
        on(filter, handler),
    )
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
