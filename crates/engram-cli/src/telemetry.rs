//! The process's tracing subscriber: the log on stderr (filtered by
//! `ENGRAM_LOG`) and, when `[telemetry] otlp_endpoint` is set, an
//! OpenTelemetry layer that exports spans over OTLP/HTTP (protobuf) to a
//! collector, with its own filter (`otlp_filter`), so a trace can hold the
//! debug spans (embed, search, fan-out, shard calls and searches, merge,
//! vote) while the log stays at info.
//!
//! Spans leave in batches from the SDK's own thread; [`Telemetry`]'s drop
//! flushes what is still queued when the process ends.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use engram_core::config::TelemetryConfig;

/// Keeps the exporter alive; flushes and stops it when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: spans not flushed at exit: {e}");
        }
    }
}

/// Installs the subscriber. `exporter` is the node's telemetry settings and
/// its default service name (`engram-<role>`); `None` (every command but
/// `serve`) logs only.
pub fn init(exporter: Option<(&TelemetryConfig, &str)>) -> anyhow::Result<Telemetry> {
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or a collector gets plain
        // lines (`request_id=...` greps as written).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            EnvFilter::try_from_env("ENGRAM_LOG").unwrap_or_else(|_| "info,ort=warn".into()),
        );
    let mut provider = None;
    let otel = match exporter {
        Some((config, default_name)) if config.otlp_endpoint.is_some() => {
            let endpoint = config.otlp_endpoint.clone().unwrap_or_default();
            let filter = EnvFilter::try_new(&config.otlp_filter).with_context(|| {
                format!(
                    "telemetry.otlp_filter {:?} is not a filter",
                    config.otlp_filter
                )
            })?;
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .build()
                .with_context(|| format!("cannot make an OTLP exporter for {endpoint}"))?;
            let name = config
                .service_name
                .clone()
                .unwrap_or_else(|| default_name.to_string());
            let built = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(name).build())
                .build();
            let tracer = built.tracer("engram");
            provider = Some(built);
            // Internal calls carry W3C `traceparent` (engram_meta::request_id),
            // so a request is one trace across coordinator and workers.
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(filter),
            )
        }
        _ => None,
    };
    let exporting = otel.is_some();
    tracing_subscriber::registry().with(log).with(otel).init();
    if exporting {
        tracing::info!(
            endpoint = exporter.and_then(|(c, _)| c.otlp_endpoint.as_deref()),
            "exporting spans over OTLP"
        );
    }
    Ok(Telemetry { provider })
}
