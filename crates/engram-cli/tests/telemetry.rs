//! The optional OTLP exporter, against a collector on loopback made here:
//! with `[telemetry] otlp_endpoint` set, one classification by image
//! arrives as one trace whose spans are the request (with its request id),
//! embed, search, one search per shard under it, merge and vote, each
//! inside the request; in a cluster, one search is one trace across the
//! coordinator and every worker that served it (W3C `traceparent`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::{Server, write_config};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An OTLP/HTTP traces endpoint on loopback that keeps every body it gets.
struct Collector {
    url: String,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    fn start() -> Collector {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let kept = bodies.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push(body.to_vec());
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        Collector {
            url: format!("http://{addr}/v1/traces"),
            bodies,
            _runtime: runtime,
        }
    }

    /// Every span received so far, decoded.
    fn spans(&self) -> Vec<Span> {
        self.services().into_iter().map(|(_, span)| span).collect()
    }

    /// Every span received so far with the `service.name` that sent it.
    fn services(&self) -> Vec<(String, Span)> {
        let mut out = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            let request =
                ExportTraceServiceRequest::decode(body.as_slice()).expect("an OTLP protobuf body");
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .as_ref()
                    .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                    .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                        AnyValue::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        out.push((service.clone(), span));
                    }
                }
            }
        }
        out
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

fn png() -> String {
    let image = image::RgbImage::from_fn(40, 40, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 6) as u8, 90])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(out.into_inner())
}

#[test]
fn a_classification_arrives_as_one_trace_of_the_documented_spans() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let server = Server::start_with_env(
        &config,
        &dir.path().join("data"),
        &[
            (
                "ENGRAM_TELEMETRY__OTLP_ENDPOINT".into(),
                collector.url.clone(),
            ),
            // The SDK's batch delay, so the test waits ms, not 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ],
    );
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "pics", "embedder": "default", "shards": 3 }),
    );
    assert_eq!(status, 201, "{body}");
    let items: Vec<_> = (0..30)
        .map(|i| {
            let v: Vec<f32> = (0..1280)
                .map(|d| ((d * 7 + i * 13) % 17) as f32 + 0.5)
                .collect();
            json!({ "id": i, "label": format!("l{}", i % 3), "vector": v })
        })
        .collect();
    let (status, body) = server.post("/v1/collections/pics/items", &json!({ "items": items }));
    assert_eq!(status, 200, "{body}");

    let response = server
        .http
        .post(server.url("/v1/collections/pics/classify"))
        .header("x-request-id", "otlp-traced-1")
        .json(&json!({ "image": png(), "k": 5 }))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);

    let deadline = Instant::now() + Duration::from_secs(30);
    let (request, trace) = loop {
        let spans = collector.spans();
        let request = spans.iter().find(|s| {
            s.name == "request" && attribute(s, "request_id").as_deref() == Some("otlp-traced-1")
        });
        if let Some(request) = request {
            let trace: Vec<Span> = spans
                .iter()
                .filter(|s| s.trace_id == request.trace_id)
                .cloned()
                .collect();
            if trace.iter().any(|s| s.name == "vote") {
                break (request.clone(), trace);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no complete trace arrived: {spans:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let named = |name: &str| -> Vec<&Span> { trace.iter().filter(|s| s.name == name).collect() };
    let parent_of = |span: &Span| trace.iter().find(|p| p.span_id == span.parent_span_id);
    for name in ["embed", "search", "merge", "vote"] {
        let spans = named(name);
        assert_eq!(spans.len(), 1, "{name}: {trace:#?}");
    }
    assert_eq!(attribute(named("embed")[0], "images").as_deref(), Some("1"));
    // One search per shard, each under the search span.
    let search = named("search")[0];
    let shards = named("shard_search");
    assert_eq!(shards.len(), 3, "{trace:#?}");
    let mut numbers: Vec<String> = shards
        .iter()
        .filter_map(|s| attribute(s, "shard"))
        .collect();
    numbers.sort();
    assert_eq!(numbers, ["0", "1", "2"]);
    for shard in &shards {
        assert_eq!(shard.parent_span_id, search.span_id, "{trace:#?}");
    }
    // Every span of the trace leads up to the request span.
    for span in &trace {
        let mut at = span;
        let mut hops = 0;
        while at.span_id != request.span_id {
            at = parent_of(at)
                .unwrap_or_else(|| panic!("{} is outside the request: {trace:#?}", span.name));
            hops += 1;
            assert!(hops < 10);
        }
    }
    // Spans have real durations.
    for span in &trace {
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }
}

#[test]
fn one_search_is_one_trace_across_the_coordinator_and_its_workers() {
    let collector = Collector::start();
    let cluster = common::cluster::Cluster::start_with(&format!(
        "compaction_interval_s = 0\n\n[telemetry]\notlp_endpoint = {:?}",
        collector.url
    ));
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({ "name": "traced", "dim": 8, "metric": "l2", "shards": 6 }),
    );
    assert_eq!(status, 201, "{body}");
    let items: Vec<_> = (0..120u64)
        .map(|id| json!({ "id": id, "label": format!("l{}", id % 3), "vector": common::cluster::vector(id) }))
        .collect();
    let (status, body) = cluster.post("/v1/collections/traced/items", &json!({ "items": items }));
    assert!(status < 300, "{body}");
    let base = cluster.coordinators[0].base.clone().unwrap();
    let response = cluster
        .http
        .post(format!("{base}/v1/collections/traced/search"))
        .header("x-request-id", "otlp-cluster-1")
        .json(&json!({ "vector": common::cluster::vector(7), "k": 5 }))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);

    // Batches leave every 5 s by default: wait for the workers' too.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let spans = collector.services();
        let root = spans.iter().find(|(service, s)| {
            service == "engram-coordinator"
                && s.name == "request"
                && attribute(s, "request_id").as_deref() == Some("otlp-cluster-1")
        });
        if let Some((_, root)) = root {
            let trace: Vec<&(String, Span)> = spans
                .iter()
                .filter(|(_, s)| s.trace_id == root.trace_id)
                .collect();
            let calls: Vec<&Span> = trace
                .iter()
                .filter(|(service, s)| service == "engram-coordinator" && s.name == "shard_call")
                .map(|(_, s)| s)
                .collect();
            // Each worker's request span hangs under the coordinator's call
            // to it, and its shard searches under that.
            let served: Vec<&Span> = trace
                .iter()
                .filter(|(service, s)| service == "engram-worker" && s.name == "request")
                .map(|(_, s)| s)
                .collect();
            let searched = trace
                .iter()
                .filter(|(service, s)| service == "engram-worker" && s.name == "shard_search")
                .count();
            if !calls.is_empty() && served.len() == calls.len() && searched >= 6 {
                for worker_request in served {
                    assert!(
                        calls
                            .iter()
                            .any(|c| c.span_id == worker_request.parent_span_id),
                        "a worker's request span is not under a shard_call: {trace:#?}"
                    );
                    assert_eq!(
                        attribute(worker_request, "request_id").as_deref(),
                        Some("otlp-cluster-1")
                    );
                }
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no joined trace arrived: {:#?}",
            spans
                .iter()
                .map(|(service, s)| (service, &s.name, hex(&s.trace_id)))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
