//! API keys on the public API of a real server, walked route by route from
//! the router's own table (`engram_coordinator::api::public_routes`, the
//! list the router is built from), so a new route cannot be forgotten:
//! without a key 401, with a wrong one 401, the read-only key on a write
//! or admin route 403, the right key never 401/403; a refused request
//! stores nothing; engramctl sends `ENGRAM_API_KEY`. Then the internal
//! routers of a real cluster, walked from their own route lists: without
//! the cluster secret (or with a wrong one, or a public API key instead)
//! 401 on every route but `/healthz`, counted; a node in a cluster role
//! without a secret refuses to start unless `--insecure`. Both walks again
//! over TLS: HTTPS on the public API, mutual TLS on internal ports (no
//! session without a client certificate the cluster's CA signed); keys
//! rotated without downtime; certificates that cannot be used refused at
//! start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::Cluster;
use common::*;
use engram_coordinator::api::{Access, PublicRoute, public_routes};
use engram_coordinator::cluster::ClusterBackend;
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

/// `engram_auth_refused_total{reason}` in a `/metrics` text.
fn refusals(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("engram_auth_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
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
    let server = Server::start_with_env(&config, &dir.path().join("data"), &key_env());
    (dir, server)
}

fn key_env() -> Vec<(String, String)> {
    vec![
        ("ENGRAM_SECURITY__API_KEY".to_string(), FULL.to_string()),
        (
            "ENGRAM_SECURITY__READ_ONLY_API_KEY".to_string(),
            READ.to_string(),
        ),
    ]
}

#[test]
fn every_public_route_asks_for_the_right_key() {
    let (_dir, server) = start();
    walk_public_routes(&server);
}

#[test]
fn every_public_route_asks_for_the_right_key_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::TestCerts::generate(&dir.path().join("tls"), "embedded");
    let config = write_config(dir.path(), "");
    let server = Server::start_tls(&config, &dir.path().join("data"), &key_env(), &certs);
    assert!(server.base.starts_with("https://"), "{}", server.base);
    walk_public_routes(&server);

    // Plain HTTP to the TLS port gets no answer, nor does a client that
    // trusts only the system's roots; both are counted as failed handshakes.
    let plain = server.base.replacen("https://", "http://", 1);
    let answer = reqwest::blocking::Client::new()
        .get(format!("{plain}/v1/collections"))
        .bearer_auth(FULL)
        .timeout(std::time::Duration::from_secs(10))
        .send();
    assert!(
        answer.as_ref().map_or(true, |r| r.status().as_u16() == 400),
        "plain HTTP on a TLS port: {answer:?}"
    );
    let untrusting = reqwest::blocking::Client::new()
        .get(server.url("/healthz"))
        .send();
    assert!(
        untrusting.is_err(),
        "a client not trusting the CA connected"
    );
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .bearer_auth(READ)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("engram_tls_handshake_failures_total{listener=\"public\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(failures.is_some_and(|n| n >= 1), "{metrics}");

    // engramctl and the other commands trust a private CA through
    // ENGRAM_CA_CERT (or --ca-cert), and not without it.
    let (ok, text) = common::cluster::engramctl_trusting(
        READ,
        Some(&certs.ca),
        &server.base,
        &["collections", "list"],
    );
    assert!(ok, "{text}");
    let (ok, text) = common::cluster::engramctl(READ, &server.base, &["collections", "list"]);
    assert!(!ok, "engramctl trusted an unknown CA: {text}");
}

/// Every route of the public router with no key, a wrong one, the
/// read-only one and the full one.
fn walk_public_routes(server: &Server) {
    let routes = public_routes();
    assert!(
        routes.len() >= 30,
        "the table lists every route: {routes:?}"
    );
    let create = json!({ "name": "m", "dim": 4, "metric": "l2" });
    let (status, body, _) = send(
        server,
        "POST",
        "/v1/collections",
        Key::Bearer(FULL),
        Some(&create),
    );
    assert_eq!(status, 201, "{body}");

    for route in &routes {
        let path = concrete(route.path);
        let what = format!("{} {}", route.method, route.path);
        let none = send(server, route.method, &path, Key::None, None);
        let wrong = send(
            server,
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
        let read = send(server, route.method, &path, Key::Header(READ), None);
        match route.access {
            Access::Write | Access::Admin => refused(
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
            let answer = send(server, route.method, &path, key, None);
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
            refusals(&metrics, reason) >= 1,
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

#[test]
fn keys_rotate_without_downtime() {
    // Step 1 of a rotation: the new keys are the keys, the old ones are
    // still accepted with the same access.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (new_full, new_read) = ("new-full-key-0123456789", "new-read-key-0123456789");
    let env = |accepted: bool| {
        let mut env = vec![
            ("ENGRAM_SECURITY__API_KEY".to_string(), new_full.to_string()),
            (
                "ENGRAM_SECURITY__READ_ONLY_API_KEY".to_string(),
                new_read.to_string(),
            ),
        ];
        if accepted {
            env.push(("ENGRAM_SECURITY__ACCEPTED_API_KEY".into(), FULL.into()));
            env.push((
                "ENGRAM_SECURITY__ACCEPTED_READ_ONLY_API_KEY".into(),
                READ.into(),
            ));
        }
        env
    };
    let data = dir.path().join("data");
    let mut server = Server::start_with_env(&config, &data, &env(true));
    let create = |name: &str| json!({ "name": name, "dim": 4, "metric": "l2" });
    for (key, name) in [(FULL, "old"), (new_full, "new")] {
        let answer = send(
            &server,
            "POST",
            "/v1/collections",
            Key::Bearer(key),
            Some(&create(name)),
        );
        assert_eq!(
            answer.0, 201,
            "{name} full key during the rotation: {:?}",
            answer.1
        );
    }
    for key in [READ, new_read] {
        assert_eq!(
            send(&server, "GET", "/v1/collections", Key::Header(key), None).0,
            200
        );
        refused(
            &send(
                &server,
                "POST",
                "/v1/collections",
                Key::Header(key),
                Some(&create("x")),
            ),
            403,
            "permission_denied",
            "a read-only key, old or new, stays read-only",
        );
    }
    // Step 2: the old keys are dropped; they are refused like any other.
    server.stop();
    let server = Server::start_with_env(&config, &data, &env(false));
    for key in [FULL, READ] {
        refused(
            &send(&server, "GET", "/v1/collections", Key::Bearer(key), None),
            401,
            "unauthenticated",
            "an old key after the rotation",
        );
    }
    let (status, list, _) = send(
        &server,
        "GET",
        "/v1/collections",
        Key::Bearer(new_read),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        list["collections"].as_array().map(Vec::len),
        Some(2),
        "{list}"
    );
}

/// `engram token` with `args`: the token it prints.
fn mint(signing_key: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .arg("token")
        .args(args)
        .env("ENGRAM_SECURITY__TOKEN_SIGNING_KEY", signing_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_scoped_token_reaches_its_collections_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let signing = "token-signing-key-0123456789abcdef";
    let mut env = key_env();
    env.push((
        "ENGRAM_SECURITY__TOKEN_SIGNING_KEY".to_string(),
        signing.to_string(),
    ));
    let server = Server::start_with_env(&config, &dir.path().join("data"), &env);
    for name in ["mine", "theirs"] {
        let create = json!({ "name": name, "dim": 4, "metric": "l2" });
        let answer = send(
            &server,
            "POST",
            "/v1/collections",
            Key::Bearer(FULL),
            Some(&create),
        );
        assert_eq!(answer.0, 201, "{:?}", answer.1);
    }
    let reader = mint(signing, &["--collection", "mine", "--ttl", "1h"]);
    let writer = mint(signing, &["--collection", "mine", "--write", "--ttl", "1h"]);
    let item =
        |id: u64| json!({ "items": [{ "id": id, "label": "a", "vector": [1.0, 2.0, 3.0, 4.0] }] });
    let query = json!({ "vector": [1.0, 2.0, 3.0, 4.0], "k": 1 });

    // Writes in its collection with --write; reads with either.
    let answer = send(
        &server,
        "POST",
        "/v1/collections/mine/items",
        Key::Bearer(&writer),
        Some(&item(1)),
    );
    assert!(answer.0 < 300, "{:?}", answer.1);
    for token in [&reader, &writer] {
        let answer = send(
            &server,
            "POST",
            "/v1/collections/mine/search",
            Key::Header(token),
            Some(&query),
        );
        assert_eq!(answer.0, 200, "{:?}", answer.1);
        assert_eq!(answer.1["neighbors"][0]["id"], 1, "{:?}", answer.1);
    }
    refused(
        &send(
            &server,
            "POST",
            "/v1/collections/mine/items",
            Key::Bearer(&reader),
            Some(&item(2)),
        ),
        403,
        "permission_denied",
        "a read token writing",
    );
    // Nothing outside its collections, and no administration inside them.
    for (method, path, body) in [
        ("POST", "/v1/collections/theirs/search", Some(&query)),
        ("POST", "/v1/collections/theirs/items", Some(&item(3))),
        ("GET", "/v1/collections", None),
        ("GET", "/v1/cluster", None),
        ("GET", "/metrics", None),
        ("POST", "/v1/collections/mine/compact", None),
        ("DELETE", "/v1/collections/mine", None),
        ("POST", "/v1/snapshots", None),
    ] {
        refused(
            &send(&server, method, path, Key::Bearer(&writer), body),
            403,
            "permission_denied",
            &format!("a token for mine: {method} {path}"),
        );
    }
    let (status, theirs, _) = send(
        &server,
        "GET",
        "/v1/collections/theirs",
        Key::Bearer(READ),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        theirs["items"], 0,
        "a refused write stored something: {theirs}"
    );
    let (status, _, _) = send(
        &server,
        "GET",
        "/v1/collections/mine",
        Key::Bearer(READ),
        None,
    );
    assert_eq!(
        status, 200,
        "the collection a token could not delete is there"
    );

    // Signed with another key, or expired: 401.
    let forged = mint(
        "another-signing-key-0123456789",
        &["--collection", "mine", "--write"],
    );
    refused(
        &send(
            &server,
            "POST",
            "/v1/collections/mine/search",
            Key::Bearer(&forged),
            Some(&query),
        ),
        401,
        "unauthenticated",
        "a token signed with another key",
    );
    let short = mint(signing, &["--collection", "mine", "--ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let expired = send(
        &server,
        "POST",
        "/v1/collections/mine/search",
        Key::Bearer(&short),
        Some(&query),
    );
    refused(&expired, 401, "unauthenticated", "an expired token");
    assert!(
        expired.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{:?}",
        expired.1
    );
    let metrics = server.metrics_text_with(READ);
    for reason in ["out_of_scope", "expired", "wrong", "read_only"] {
        assert!(refusals(&metrics, reason) >= 1, "{reason}: {metrics}");
    }
    assert!(!metrics.contains(&writer[..40]), "a token in the metrics");
}

#[test]
fn a_node_refuses_to_start_with_tls_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::TestCerts::generate(&dir.path().join("tls"), "refused");
    let config = write_config(dir.path(), "");
    // A certificate file that is not one is named, and nothing is served.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let mut env = certs.env();
    env[0].1 = garbage.display().to_string();
    let error = Server::try_start_with_env(&config, &dir.path().join("data"), &env)
        .err()
        .expect("a server started with a garbage certificate");
    assert!(error.contains("garbage.pem"), "{error}");
    // A key that is not the certificate's.
    let other = tls::TestCerts::generate(&dir.path().join("tls"), "other");
    let mut env = certs.env();
    env[1].1 = other.key.display().to_string();
    let error = Server::try_start_with_env(&config, &dir.path().join("data"), &env)
        .err()
        .expect("a server started with a key that is not its certificate's");
    assert!(error.contains("do not go together"), "{error}");

    // A coordinator with HTTPS outside but no CA for its peers.
    let port = common::cluster::free_port();
    let role_config = dir.path().join("coordinator.toml");
    std::fs::write(
        &role_config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[cluster]\n\
             role = \"coordinator\"\nnode_id = 1\ninternal_listen = \"127.0.0.1:{port}\"\n\
             coordinators = [{{ id = 1, addr = \"127.0.0.1:{port}\" }}]\n\n[security]\n\
             cluster_secret = \"{}\"\n\n[security.tls]\ncert = {:?}\nkey = {:?}\n",
            dir.path().join("coordinator").display().to_string(),
            common::cluster::random_secret(),
            certs.cert.display().to_string(),
            certs.key.display().to_string(),
        ),
    )
    .unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["serve", "--config"])
        .arg(&role_config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a coordinator started with TLS outside only"
    );
    assert!(
        stderr.contains("refusing to start with TLS on the public port only")
            && stderr.contains("ENGRAM_SECURITY__TLS__CA"),
        "{stderr}"
    );
}

#[test]
fn every_internal_route_asks_for_the_cluster_secret() {
    let cluster = Cluster::start();
    walk_internal_routes(&cluster, &reqwest::blocking::Client::new(), "http");
}

#[test]
fn every_internal_route_asks_for_the_cluster_secret_over_mutual_tls() {
    let cluster = Cluster::start_tls();
    let certs = cluster.tls.as_ref().unwrap();
    // A peer: trusts the cluster's CA and presents a certificate it signed.
    let peer = certs.client().identity(certs.identity()).build().unwrap();
    walk_internal_routes(&cluster, &peer, "https");

    // Without a client certificate, with one another CA signed, or in
    // plain HTTP, nothing reaches a route, not even the open probe.
    let stranger = tls::TestCerts::generate(&cluster.dir.path().join("stranger"), "stranger");
    let no_identity = certs.client().build().unwrap();
    let foreign_identity = certs
        .client()
        .identity(stranger.identity())
        .build()
        .unwrap();
    for addr in [
        cluster.coordinators[0].internal_addr(),
        cluster.workers[0].internal_addr(),
    ] {
        for (who, client, scheme) in [
            ("no client certificate", &no_identity, "https"),
            ("a foreign certificate", &foreign_identity, "https"),
            ("plain HTTP", &reqwest::blocking::Client::new(), "http"),
        ] {
            let answer = client
                .post(format!(
                    "{scheme}://{addr}{}",
                    engram_worker::server::HEALTHZ
                ))
                .header("engram-cluster-secret", &cluster.cluster_secret)
                .timeout(std::time::Duration::from_secs(10))
                .send();
            assert!(
                answer.is_err(),
                "{addr} answered a caller with {who}: {answer:?}"
            );
        }
    }
    // The cluster works over TLS end to end: a write replicated by the
    // workers, read back, and engramctl trusting the CA.
    let base = cluster.coordinators[0].base.clone().unwrap();
    assert!(base.starts_with("https://"), "{base}");
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({ "name": "t", "dim": 8, "metric": "l2" }),
    );
    assert_eq!(status, 201, "{body}");
    let items =
        json!({ "items": [{ "id": 1, "label": "a", "vector": common::cluster::vector(1) }] });
    let (status, body) = cluster.post("/v1/collections/t/items", &items);
    assert!(status < 300, "{body}");
    let (status, body) = cluster.post(
        "/v1/collections/t/search",
        &json!({ "vector": common::cluster::vector(1), "k": 1 }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["neighbors"][0]["id"], 1, "{body}");
    let (ok, text) = cluster.engramctl(&base, &["status"]);
    assert!(ok, "{text}");
}

/// Every internal route of a coordinator and a worker, called by `http`
/// over `scheme`: without the secret (or a wrong one, or a public key) 401,
/// with it the handler.
fn walk_internal_routes(cluster: &Cluster, http: &reqwest::blocking::Client, scheme: &str) {
    let coordinator = cluster.coordinators[0].internal_addr();
    let worker = cluster.workers[0].internal_addr();
    let wrong = "wrong-secret-0123456789abcdef";
    let mut refused_routes = 0;
    for (addr, paths) in [
        (&coordinator, ClusterBackend::internal_paths()),
        (&worker, engram_worker::server::paths()),
    ] {
        assert!(paths.len() >= 5, "{addr}: {paths:?}");
        for path in paths {
            let post = |secret: Option<&str>| {
                let mut request = http
                    .post(format!("{scheme}://{addr}{path}"))
                    .header("content-type", "application/x-bincode")
                    .body(vec![0xff_u8; 64]);
                if let Some(secret) = secret {
                    request = request.header("engram-cluster-secret", secret);
                }
                let response = request.send().unwrap();
                let status = response.status().as_u16();
                (status, response.text().unwrap_or_default())
            };
            if path == engram_worker::server::HEALTHZ {
                let status = http
                    .get(format!("{scheme}://{addr}{path}"))
                    .send()
                    .unwrap()
                    .status();
                assert_eq!(status, 200, "{addr}{path} is the open probe");
                continue;
            }
            // A public API key is not the cluster secret.
            for presented in [None, Some(wrong), Some(cluster.api_key.as_str())] {
                let (status, body) = post(presented);
                assert_eq!(status, 401, "{addr}{path} with {presented:?}: {body}");
                let body: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(body["error"]["code"], "unauthenticated", "{addr}{path}");
            }
            // With the secret the request reaches the handler, which
            // refuses the undecodable body; /metrics is read with a GET,
            // the secret sent as Prometheus sends it (a bearer token).
            let (status, body) = post(Some(&cluster.cluster_secret));
            if path == engram_worker::server::METRICS {
                assert_eq!(status, 405, "{addr}{path} with the secret: {body}");
                let scraped = http
                    .get(format!("{scheme}://{addr}{path}"))
                    .bearer_auth(&cluster.cluster_secret)
                    .send()
                    .unwrap();
                assert_eq!(scraped.status(), 200, "{addr}{path}");
                let scraped = scraped.text().unwrap();
                assert!(
                    scraped.contains("engram_cluster_secret_refused_total"),
                    "{scraped}"
                );
            } else {
                assert_eq!(status, 400, "{addr}{path} with the secret: {body}");
            }
            if addr == &coordinator {
                refused_routes += 1;
            }
        }
    }
    // Counted on the coordinator's /metrics: one missing and two wrong per
    // route, nothing else (its peers send the secret).
    let base = cluster.coordinators[0].base.clone().unwrap();
    let text = cluster.coordinator_metrics(&base);
    for (reason, count) in [("missing", refused_routes), ("wrong", 2 * refused_routes)] {
        let line = format!("engram_cluster_secret_refused_total{{reason=\"{reason}\"}} {count}");
        assert!(text.contains(&line), "no `{line}` in:\n{text}");
    }
    // Nothing refused changed the cluster.
    cluster.wait_ready(3, std::time::Duration::from_secs(10));
}

#[test]
fn a_cluster_node_without_a_secret_starts_only_when_told_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::cluster::free_port();
    for role in ["coordinator", "worker"] {
        let config = dir.path().join(format!("{role}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[cluster]\n\
                 role = \"{role}\"\nnode_id = 1\ninternal_listen = \"127.0.0.1:{port}\"\n\
                 coordinators = [{{ id = 1, addr = \"127.0.0.1:{port}\" }}]\n",
                dir.path().join(role).display().to_string()
            ),
        )
        .unwrap();
        let refused = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success(),
            "a {role} started without a secret"
        );
        assert!(
            stderr.contains(&format!(
                "refusing to start a {role} without a cluster secret"
            )) && stderr.contains("ENGRAM_SECURITY__CLUSTER_SECRET")
                && stderr.contains("--insecure"),
            "{stderr}"
        );
        assert!(
            !dir.path().join(role).exists(),
            "the refused {role} wrote its data directory"
        );
        // --insecure: it starts (and says what that means).
        let log = dir.path().join(format!("{role}.log"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(["serve", "--insecure", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(line.contains("listening on"), "{role} --insecure: {line:?}");
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(
            log.contains("without a cluster secret (--insecure)"),
            "{log}"
        );
    }
}
