//! Slow clients on a real server: 100 connections sending one byte a
//! second (half of them still in their request head, half in a body that
//! declares a large length) are cut off within the head and body timeouts
//! and counted, while normal queries from the same address keep being
//! answered: a slow body holds neither a query slot nor the bytes it only
//! declared.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const HEAD_TIMEOUT_MS: u64 = 5_000;
const BODY_TIMEOUT_MS: u64 = 3_000;
/// Scheduling slack on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(4);

/// How a slow client ended.
#[derive(Debug)]
struct Ended {
    after: Duration,
    /// The first line of the answer, if there was one.
    status_line: String,
}

/// Sends `at_once`, then `slowly` one byte a second, until the server
/// answers or closes; fails after a minute.
fn trickle(addr: &str, at_once: &[u8], slowly: impl Iterator<Item = u8>) -> Ended {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(at_once).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(1_000)))
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    for byte in slowly {
        if stream.write_all(&[byte]).is_err() {
            break;
        }
        let mut buffer = [0u8; 4096];
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buffer[..n]);
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never cut off");
    }
    Ended {
        after: started.elapsed(),
        status_line: String::from_utf8_lossy(&answer)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

#[test]
fn a_hundred_slow_clients_are_cut_off_while_queries_keep_answering() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let env: Vec<(String, String)> = [
        (
            "ENGRAM_LIMITS__HEAD_TIMEOUT_MS",
            HEAD_TIMEOUT_MS.to_string(),
        ),
        (
            "ENGRAM_LIMITS__BODY_TIMEOUT_MS",
            BODY_TIMEOUT_MS.to_string(),
        ),
        // Fifty bodies each declaring 1 MB would fill this budget at once
        // if declared lengths counted.
        ("ENGRAM_LIMITS__MAX_BODY_BYTES_IN_FLIGHT", "1000000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let server = Server::start_with_env(&config, &dir.path().join("data"), &env);
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "c", "dim": 2, "metric": "l2", "shards": 1 }),
    );
    assert_eq!(status, 201, "{body}");
    let items: Vec<_> = (0..20u64)
        .map(|i| json!({ "id": i, "label": format!("l{}", i % 2), "vector": [i as f32, 1.0] }))
        .collect();
    let (status, body) = server.post("/v1/collections/c/items", &json!({ "items": items }));
    assert_eq!(status, 200, "{body}");

    let addr = server.base.trim_start_matches("http://").to_string();
    let slow: Vec<_> = (0..100)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let route = if i % 4 < 2 { "search" } else { "items" };
                if i % 2 == 0 {
                    // Still sending its head: the request line alone is
                    // longer than the head timeout in seconds.
                    let head = format!(
                        "POST /v1/collections/c/{route}?padding={} HTTP/1.1\r\nhost: x\r\n",
                        "p".repeat(20)
                    );
                    ("head", trickle(&addr, b"", head.into_bytes().into_iter()))
                } else {
                    // A whole head at once, then a body a byte a second.
                    let head = format!(
                        "POST /v1/collections/c/{route} HTTP/1.1\r\nhost: x\r\n\
                         content-type: application/json\r\ncontent-length: 1000000\r\n\r\n"
                    );
                    (
                        "body",
                        trickle(&addr, head.as_bytes(), std::iter::repeat(b'x')),
                    )
                }
            })
        })
        .collect();

    // Meanwhile, queries from the same address keep being answered.
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(HEAD_TIMEOUT_MS + 2_000) {
        let (status, body) = server.post(
            "/v1/collections/c/search",
            &json!({ "vector": [3.0, 1.0], "k": 3 }),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["neighbors"][0]["id"], 3, "{body}");
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered > 20, "{answered}");

    let mut cut = (0, 0);
    for handle in slow {
        let (phase, ended) = handle.join().unwrap();
        match phase {
            "head" => {
                // The connection is closed without an answer.
                assert!(
                    ended.after < Duration::from_millis(HEAD_TIMEOUT_MS) + SLACK,
                    "{ended:?}"
                );
                assert!(!ended.status_line.contains(" 2"), "{ended:?}");
                cut.0 += 1;
            }
            _ => {
                assert!(
                    ended.after < Duration::from_millis(BODY_TIMEOUT_MS) + SLACK,
                    "{ended:?}"
                );
                assert!(ended.status_line.contains(" 408"), "{ended:?}");
                cut.1 += 1;
            }
        }
    }
    assert_eq!(cut, (50, 50));
    // Counted: every slow head and every slow body.
    let text = server.metrics_text();
    for (reason, count) in [("head_timeout", 50), ("body_timeout", 50)] {
        let line = format!(
            "engram_requests_cut_off_total{{listener=\"public\",reason=\"{reason}\"}} {count}"
        );
        assert!(text.contains(&line), "no `{line}` in:\n{text}");
    }
}
