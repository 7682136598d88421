//! The demo: builds a visual memory of Fashion-MNIST through the public API
//! of a running server, measures every voting rule, explains one decision,
//! unlearns a class and teaches it again.
//!
//! Everything goes over HTTP exactly as a user's client would: images are
//! sent as base64 PNG, the server embeds them with its ONNX model.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use engram_ingest::idx::{self, IdxImages};

use engram_cli::client::{Client, ServerArgs, class_name, png_base64, progress};

const COLLECTION: &str = "fashion-mnist";
const PIXEL_COLLECTION: &str = "fashion-mnist-pixels";
const RULES: [&str; 4] = ["rank", "softmax", "distance", "plurality"];
const KS: [usize; 2] = [10, 50];
/// The class the demo unlearns and teaches again.
const UNLEARNED_CLASS: u8 = 1;

#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Folder with the Fashion-MNIST IDX files (Debian package dataset-fashion-mnist).
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    dataset_dir: PathBuf,
    /// Training images put into the memory (about 2 minutes for 20,000 on 2 cores).
    #[arg(long, default_value_t = 20_000)]
    train: usize,
    /// Held-out test images classified.
    #[arg(long, default_value_t = 1_000)]
    test: usize,
    /// Images per upload request.
    #[arg(long, default_value_t = 128)]
    batch: usize,
}

/// Uploads training images `ids` as images; returns how many were added.
fn upload_images(
    client: &Client,
    images: &IdxImages,
    labels: &[u8],
    ids: &[usize],
    batch: usize,
    what: &str,
) -> anyhow::Result<usize> {
    let bar = progress(ids.len(), what);
    let mut added = 0;
    for chunk in ids.chunks(batch) {
        let items = chunk
            .iter()
            .map(|&i| {
                Ok(json!({
                    "id": i as u64,
                    "label": class_name(labels[i]),
                    "image": png_base64(images, i)?,
                    "source": format!("fashion-mnist/train#{i}"),
                }))
            })
            .collect::<anyhow::Result<Vec<Value>>>()?;
        let answer = client.post(
            &format!("/v1/collections/{COLLECTION}/items"),
            &json!({ "items": items }),
        )?;
        added += answer["added"].as_u64().unwrap_or(0) as usize;
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(added)
}

/// Classifies `vectors` in batches; returns one decision per vector.
fn classify_all(
    client: &Client,
    collection: &str,
    vectors: &[Value],
    k: usize,
    rule: &str,
) -> anyhow::Result<Vec<Value>> {
    classify_reranked(client, collection, vectors, k, rule, json!(false))
}

/// [`classify_all`] with `rerank` (a re-ranker's name, or `false`).
fn classify_reranked(
    client: &Client,
    collection: &str,
    vectors: &[Value],
    k: usize,
    rule: &str,
    rerank: Value,
) -> anyhow::Result<Vec<Value>> {
    let mut results = Vec::with_capacity(vectors.len());
    for chunk in vectors.chunks(500) {
        let queries: Vec<Value> = chunk.iter().map(|v| json!({ "vector": v })).collect();
        let answer = client.post(
            &format!("/v1/collections/{collection}/classify/batch"),
            &json!({ "queries": queries, "k": k, "rule": rule, "rerank": rerank }),
        )?;
        results.extend(answer["results"].as_array().cloned().unwrap_or_default());
    }
    Ok(results)
}

fn accuracy(results: &[Value], truth: &[u8]) -> f64 {
    accuracy_of(results, truth, |r| &r["label"])
}

/// The share of `results` whose `field` is the true label.
fn accuracy_of(results: &[Value], truth: &[u8], field: impl Fn(&Value) -> &Value) -> f64 {
    let correct = results
        .iter()
        .zip(truth)
        .filter(|(r, t)| field(r).as_str() == Some(class_name(**t)))
        .count();
    correct as f64 / truth.len().max(1) as f64
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = Client::connect(&args.server)?;
    client.wait_healthy(Duration::from_secs(120))?;
    let dir = &args.dataset_dir;
    let train_images =
        idx::read_images(&dir.join("train-images-idx3-ubyte.gz")).with_context(|| {
            format!(
                "Fashion-MNIST not found in {} (apt-get install dataset-fashion-mnist)",
                dir.display()
            )
        })?;
    let train_labels = idx::read_labels(&dir.join("train-labels-idx1-ubyte.gz"))?;
    let test_images = idx::read_images(&dir.join("t10k-images-idx3-ubyte.gz"))?;
    let test_labels = idx::read_labels(&dir.join("t10k-labels-idx1-ubyte.gz"))?;
    let n_train = args.train.min(train_images.count);
    let n_test = args.test.min(test_images.count);
    println!(
        "Engram demo: Fashion-MNIST, memory of {n_train} training images, {n_test} held-out test images"
    );

    // 1. A collection that embeds images with the default model.
    client.delete_collection(COLLECTION)?;
    let created = client.post(
        "/v1/collections",
        &json!({ "name": COLLECTION, "embedder": "default" }),
    )?;
    println!(
        "created collection {COLLECTION}: dim {}, metric {}, {} shards",
        created["dim"], created["metric"], created["shards"]
    );

    // 2. Build the memory: images over the API, embedded by the server.
    let build_started = Instant::now();
    let train_ids: Vec<usize> = (0..n_train).collect();
    let added = upload_images(
        &client,
        &train_images,
        &train_labels,
        &train_ids,
        args.batch,
        "building memory",
    )?;
    let build_seconds = build_started.elapsed().as_secs_f64();
    let info = client.get(&format!("/v1/collections/{COLLECTION}"))?;
    println!(
        "memory built: {added} images in {build_seconds:.1} s ({:.0} images/s end to end); collection reports items={}",
        added as f64 / build_seconds,
        info["items"]
    );

    // 3. Embed the test images once, then classify with every rule and k.
    let bar = progress(n_test, "embedding test images");
    let mut test_vectors: Vec<Value> = Vec::with_capacity(n_test);
    for chunk in (0..n_test).collect::<Vec<_>>().chunks(args.batch) {
        let images = chunk
            .iter()
            .map(|&i| png_base64(&test_images, i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let answer = client.post(
            &format!("/v1/collections/{COLLECTION}/embed"),
            &json!({ "images": images }),
        )?;
        test_vectors.extend(answer["vectors"].as_array().cloned().unwrap_or_default());
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    let truth = &test_labels[..n_test];
    for k in KS {
        for rule in RULES {
            let results = classify_all(&client, COLLECTION, &test_vectors, k, rule)?;
            println!(
                "accuracy rule={rule} k={k} n={n_test}: {:.4}",
                accuracy(&results, truth)
            );
        }
    }

    // 3b. The second stage: the built-in head re-ranker (`[rerankers.head]`
    // of the config) trained from this memory by a job, fused with the
    // votes. Without "rerank" in a request the votes decide alone.
    let trained_at = Instant::now();
    let job = client.post(
        &format!("/v1/collections/{COLLECTION}/jobs"),
        &json!({ "kind": "train_head", "reranker": "head" }),
    )?;
    let job = crate::prune::follow_job(
        &client,
        COLLECTION,
        job["id"].as_u64().unwrap_or(0),
        "training the head",
    )?;
    let train_seconds = trained_at.elapsed().as_secs_f64();
    let results = classify_reranked(
        &client,
        COLLECTION,
        &test_vectors,
        10,
        "rank",
        json!("head"),
    )?;
    println!(
        "second stage: head trained on {} rows in {train_seconds:.1} s; rule=rank k=10 n={n_test}: votes {:.4}, head alone {:.4}, fused (mix 0.5) {:.4}",
        job["report"]["rows"],
        accuracy_of(&results, truth, |r| &r["rerank"]["vote_label"]),
        accuracy_of(&results, truth, |r| &r["rerank"]["reranker_label"]),
        accuracy(&results, truth)
    );

    // 4. Baseline: the same memory as raw pixels (784-d), same rules.
    client.delete_collection(PIXEL_COLLECTION)?;
    client.post(
        "/v1/collections",
        &json!({ "name": PIXEL_COLLECTION, "dim": 784, "metric": "cosine" }),
    )?;
    let pixels = |images: &IdxImages, i: usize| -> Value {
        json!(
            images
                .image(i)
                .iter()
                .map(|p| *p as f32 / 255.0)
                .collect::<Vec<f32>>()
        )
    };
    for chunk in train_ids.chunks(1000) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|&i| json!({ "id": i as u64, "label": class_name(train_labels[i]), "vector": pixels(&train_images, i) }))
            .collect();
        client.post(
            &format!("/v1/collections/{PIXEL_COLLECTION}/items"),
            &json!({ "items": items }),
        )?;
    }
    let pixel_queries: Vec<Value> = (0..n_test).map(|i| pixels(&test_images, i)).collect();
    for k in KS {
        let results = classify_all(&client, PIXEL_COLLECTION, &pixel_queries, k, "rank")?;
        println!(
            "baseline raw-pixels accuracy rule=rank k={k} n={n_test}: {:.4}",
            accuracy(&results, truth)
        );
    }
    client.delete_collection(PIXEL_COLLECTION)?;

    // 5. One decision, explained by the neighbours that voted.
    let query = png_base64(&test_images, 0)?;
    let decision = client.post(
        &format!("/v1/collections/{COLLECTION}/classify"),
        &json!({ "image": query, "k": 10, "rule": "rank" }),
    )?;
    println!(
        "\nexplained decision for test image 0 (true label {}): {} with confidence {:.3}",
        class_name(test_labels[0]),
        decision["label"],
        decision["confidence"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  {:>4}  {:>8}  {:<12}  {:>8}  {:>6}",
        "rank", "id", "label", "distance", "vote"
    );
    for n in decision["neighbors"].as_array().into_iter().flatten() {
        println!(
            "  {:>4}  {:>8}  {:<12}  {:>8.4}  {:>6.3}",
            n["rank"].as_u64().unwrap_or(0),
            n["id"].as_u64().unwrap_or(0),
            n["label"].as_str().unwrap_or("?"),
            n["distance"].as_f64().unwrap_or(f64::NAN),
            n["vote"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("  votes per label: {}", decision["votes"]);

    // 6. Unlearning: delete a whole class, show it is never returned.
    let class = class_name(UNLEARNED_CLASS);
    let deleted = client.post(
        &format!("/v1/collections/{COLLECTION}/items/delete"),
        &json!({ "label": class }),
    )?;
    let results = classify_all(&client, COLLECTION, &test_vectors, 50, "rank")?;
    let returned = results
        .iter()
        .flat_map(|r| r["neighbors"].as_array().cloned().unwrap_or_default())
        .filter(|n| n["label"].as_str() == Some(class))
        .count();
    let class_queries: Vec<usize> = (0..n_test)
        .filter(|i| truth[*i] == UNLEARNED_CLASS)
        .collect();
    let predicted_as_class = results
        .iter()
        .filter(|r| r["label"].as_str() == Some(class))
        .count();
    let info = client.get(&format!("/v1/collections/{COLLECTION}"))?;
    println!(
        "\nunlearned class {class:?}: deleted {} items; neighbours labelled {class:?} in {n_test} queries at k=50: {returned}; predicted {class:?}: {predicted_as_class}; collection now has items={} and {class:?} count {}",
        deleted["deleted"],
        info["items"],
        info["labels"].get(class).cloned().unwrap_or(json!(0))
    );
    if returned != 0 || predicted_as_class != 0 {
        bail!("a deleted class was returned after its delete was acknowledged");
    }
    // The head learned the class from the deleted rows: it is stale, the
    // votes decide, and the receipt lists it until it is retrained.
    let reranked = client.post(
        &format!("/v1/collections/{COLLECTION}/classify"),
        &json!({ "vector": test_vectors[0], "k": 10, "rerank": "head" }),
    )?;
    let receipt = client.get(&format!(
        "/v1/collections/{COLLECTION}/unlearning/{}",
        deleted["receipt"]
    ))?;
    let places: Vec<&str> = receipt["places"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["kind"].as_str())
        .collect();
    println!(
        "  the head after the delete: {} ({}); the receipt lists the places {places:?}",
        reranked["rerank"]["status"].as_str().unwrap_or("?"),
        reranked["rerank"]["reason"].as_str().unwrap_or("")
    );
    if reranked["rerank"]["status"] != "skipped" || !places.contains(&"head") {
        bail!("a head trained on deleted rows was still served, or not listed by the receipt");
    }

    // 7. Teach it again: add the class back, accuracy on it returns.
    let class_ids: Vec<usize> = train_ids
        .iter()
        .copied()
        .filter(|i| train_labels[*i] == UNLEARNED_CLASS)
        .collect();
    upload_images(
        &client,
        &train_images,
        &train_labels,
        &class_ids,
        args.batch,
        "re-adding class",
    )?;
    let results = classify_all(&client, COLLECTION, &test_vectors, 50, "rank")?;
    let class_correct = class_queries
        .iter()
        .filter(|i| results[**i]["label"].as_str() == Some(class))
        .count();
    println!(
        "re-added class {class:?}: {} items; its {} test images classified correctly: {class_correct} ({:.3}); overall accuracy rule=rank k=50: {:.4}",
        class_ids.len(),
        class_queries.len(),
        class_correct as f64 / class_queries.len().max(1) as f64,
        accuracy(&results, truth)
    );
    println!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
