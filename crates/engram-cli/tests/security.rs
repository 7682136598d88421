//! API keys on the public API of a real server, walked route by route from
//! the router's own table (`engram_coordinator::api::public_routes`, the
//! list the router is built from), so a new route cannot be forgotten:
//! without a key 401, with a wrong one 401, the read-only key on a write
//! or admin route 403, the right key never 401/403; a refused request
//! stores nothing; engramctl sends `ENGRAM_API_KEY`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use engram_coordinator::api::{Access, PublicRoute, public_routes};
use serde_json::{Value, json};

const FULL: &str = "full-key-0123456789abcdef";
const READ: &str = "read-key-0123456789abcdef";

/// How a request presents its key.
#[derive(Clone, Copy, Debug)]
enum Key<'a> {
    None,
    Bearer(&'a str),
    Header(&'a str),
}

fn concrete(path: &str) -> String {
    path.replace("{collection}", "m")
        .replace("{id}", "1")
        .replace("{receipt}", "1")
        .replace("{job}", "1")
}

fn send(
    server: &Server,
    method: &str,
    path: &str,
    key: Key,
    body: Option<&Value>,
) -> (u16, Value, bool) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = server.http.request(method.clone(), server.url(path));
    request = match key {
        Key::None => request,
        Key::Bearer(k) => request.header("authorization", format!("Bearer {k}")),
        Key::Header(k) => request.header("api-key", k),
    };
    if let Some(body) = body {
        request = request.json(body);
    } else if method == reqwest::Method::POST {
        request = request.json(&json!({}));
    }
    let response = request.send().unwrap();
    let challenged = response.headers().contains_key("www-authenticate");
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, challenged)
}

fn refused(answer: &(u16, Value, bool), status: u16, code: &str, what: &str) {
    assert_eq!(answer.0, status, "{what}: {:?}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{what}: {:?}", answer.1);
    assert!(
        answer.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}"
    );
    assert_eq!(
        answer.2,
        status == 401,
        "{what}: WWW-Authenticate on 401 only"
    );
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let env = [
        ("ENGRAM_SECURITY__API_KEY".to_string(), FULL.to_string()),
        (
            "ENGRAM_SECURITY__READ_ONLY_API_KEY".to_string(),
            READ.to_string(),
        ),
    ];
    let server = Server::start_with_env(&config, &dir.path().join("data"), &env);
    (dir, server)
}

#[test]
fn every_public_route_asks_for_the_right_key() {
    let (_dir, server) = start();
    let routes = public_routes();
    assert!(
        routes.len() >= 30,
        "the table lists every route: {routes:?}"
    );
    let create = json!({ "name": "m", "dim": 4, "metric": "l2" });
    let (status, body, _) = send(
        &server,
        "POST",
        "/v1/collections",
        Key::Bearer(FULL),
        Some(&create),
    );
    assert_eq!(status, 201, "{body}");

    for route in &routes {
        let path = concrete(route.path);
        let what = format!("{} {}", route.method, route.path);
        let none = send(&server, route.method, &path, Key::None, None);
        let wrong = send(
            &server,
            route.method,
            &path,
            Key::Bearer("not-the-key-0123456789"),
            None,
        );
        if route.access == Access::Open {
            assert!(none.0 < 400, "{what} is open: {:?}", none.1);
            continue;
        }
        refused(
            &none,
            401,
            "unauthenticated",
            &format!("{what} without a key"),
        );
        refused(
            &wrong,
            401,
            "unauthenticated",
            &format!("{what} with a wrong key"),
        );
        let read = send(&server, route.method, &path, Key::Header(READ), None);
        match route.access {
            Access::Write => refused(
                &read,
                403,
                "permission_denied",
                &format!("{what} with the read-only key"),
            ),
            _ => assert!(
                !matches!(read.0, 401 | 403),
                "{what} with the read-only key: {} {:?}",
                read.0,
                read.1
            ),
        }
    }
    // The full key last (it deletes the collection on the way).
    let mut last: Vec<&PublicRoute> = routes.iter().collect();
    last.sort_by_key(|r| r.method == "DELETE" && r.path == "/v1/collections/{collection}");
    for route in last {
        let path = concrete(route.path);
        for key in [Key::Bearer(FULL), Key::Header(FULL)] {
            let answer = send(&server, route.method, &path, key, None);
            assert!(
                !matches!(answer.0, 401 | 403),
                "{} {} with the full key ({key:?}): {} {:?}",
                route.method,
                route.path,
                answer.0,
                answer.1
            );
        }
    }
}

#[test]
fn a_refused_request_stores_nothing_and_is_counted() {
    let (_dir, server) = start();
    let create = json!({ "name": "m", "dim": 4, "metric": "l2" });
    refused(
        &send(&server, "POST", "/v1/collections", Key::None, Some(&create)),
        401,
        "unauthenticated",
        "create without a key",
    );
    refused(
        &send(
            &server,
            "POST",
            "/v1/collections",
            Key::Bearer(READ),
            Some(&create),
        ),
        403,
        "permission_denied",
        "create with the read-only key",
    );
    let (status, list, _) = send(&server, "GET", "/v1/collections", Key::Bearer(READ), None);
    assert_eq!(status, 200);
    assert_eq!(
        list["collections"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );

    let (status, _, _) = send(
        &server,
        "POST",
        "/v1/collections",
        Key::Bearer(FULL),
        Some(&create),
    );
    assert_eq!(status, 201);
    let items = json!({ "items": [{ "id": 7, "label": "a", "vector": [1.0, 2.0, 3.0, 4.0] }] });
    for key in [
        Key::None,
        Key::Bearer(READ),
        Key::Header("nope-nope-nope-nope"),
    ] {
        let answer = send(
            &server,
            "POST",
            "/v1/collections/m/items",
            key,
            Some(&items),
        );
        assert!(matches!(answer.0, 401 | 403), "{key:?}: {:?}", answer.1);
    }
    let (status, item, _) = send(
        &server,
        "GET",
        "/v1/collections/m/items/7",
        Key::Bearer(READ),
        None,
    );
    assert_eq!(status, 404, "a refused add stored the item: {item}");
    // Unknown routes answer 401 to a caller without a key, 404 with one.
    refused(
        &send(&server, "GET", "/v1/nothing", Key::None, None),
        401,
        "unauthenticated",
        "unknown route",
    );
    assert_eq!(
        send(&server, "GET", "/v1/nothing", Key::Bearer(READ), None).0,
        404
    );

    let (status, metrics, _) = send(&server, "GET", "/metrics", Key::Bearer(READ), None);
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_string();
    for reason in ["missing", "wrong", "read_only"] {
        assert!(
            metrics.contains(&format!("engram_auth_refused_total{{reason=\"{reason}\"}}")),
            "{reason} not counted:\n{metrics}"
        );
    }
    assert!(!metrics.contains(FULL) && !metrics.contains(READ));
}

#[test]
fn engramctl_sends_the_key_from_its_flag_or_environment() {
    let (_dir, server) = start();
    let ctl = |env_key: Option<&str>, args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_engramctl"));
        command
            .arg("--server")
            .arg(&server.base)
            .args(args)
            .env_remove("ENGRAM_API_KEY");
        if let Some(key) = env_key {
            command.env("ENGRAM_API_KEY", key);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = ctl(
        None,
        &["collections", "create", "m", "--dim", "4", "--metric", "l2"],
    );
    assert!(!ok && text.contains("unauthenticated"), "{text}");
    let (ok, text) = ctl(
        Some(READ),
        &["collections", "create", "m", "--dim", "4", "--metric", "l2"],
    );
    assert!(!ok && text.contains("permission_denied"), "{text}");
    let (ok, text) = ctl(
        None,
        &[
            "--api-key",
            FULL,
            "collections",
            "create",
            "m",
            "--dim",
            "4",
            "--metric",
            "l2",
        ],
    );
    assert!(ok, "{text}");
    let (ok, text) = ctl(Some(READ), &["collections", "list"]);
    assert!(ok && text.contains('m'), "{text}");
    assert!(!text.contains(READ), "the key is never printed: {text}");
}

#[test]
fn a_server_refuses_to_start_with_a_weak_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let env = [("ENGRAM_SECURITY__API_KEY".to_string(), "short".to_string())];
    let error = Server::try_start_with_env(&config, &dir.path().join("data"), &env)
        .err()
        .expect("a 5-byte key is refused");
    assert!(error.contains("security.api_key"), "{error}");
    assert!(!error.contains("short\""), "the key is not echoed: {error}");
}
