//! `engram eval`: the experiments of "Towards flexible perception with
//! visual memory" in kind, on Fashion-MNIST, through a running server.
//!
//! Images are embedded by the server's model (`POST .../embed`); memories
//! are collections of those vectors; every neighbour list comes from the
//! server's `classify/batch` at k = 100. Accuracy at smaller k and under
//! other rules is computed from the same ranked lists with engram-core's
//! `decide`, the function the server runs: with L_search (100) >= k the
//! server would return exactly that prefix. Label noise is applied to the
//! labels of those lists (search never looks at labels, so this equals a
//! memory stored with noisy labels). Pruning, new classes and unlearning
//! change the memory through the API.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use engram_core::{Neighbor, VoteParams, VotingRule, decide};
use engram_ingest::idx::{self, FASHION_MNIST_CLASSES, IdxImages};

use crate::prune::follow_job;
use engram_cli::client::{Client, ServerArgs, class_name, png_base64, progress};
use engram_cli::rng::SplitMix64;

pub(crate) const MAX_K: usize = 100;
pub(crate) const REPORT_KS: [usize; 6] = [1, 5, 10, 20, 50, 100];
pub(crate) const NOISE_LEVELS: [f64; 5] = [0.0, 0.2, 0.4, 0.6, 0.8];
/// Left out of the memory, then added (Bag, Ankle boot).
pub(crate) const NEW_CLASSES: [u8; 2] = [8, 9];
/// Unlearned at the end (Trouser).
pub(crate) const UNLEARNED: u8 = 1;
/// Validation images come from the training set, after this index (the
/// memory is taken from the start, so the two never overlap).
pub(crate) const VALIDATION_START: usize = 50_000;
const EMBED_COLLECTION: &str = "eval-embedder";
const MEMORY: &str = "eval-memory";
const NEW_MEMORY: &str = "eval-new-classes";

#[derive(clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Folder with the Fashion-MNIST IDX files (Debian package dataset-fashion-mnist).
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    pub(crate) dataset_dir: PathBuf,
    /// Training images in the memory (the first ones).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) memory: usize,
    /// Validation images (training images from index 50,000), for choosing k.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) validation: usize,
    /// Test images (the first of the 10,000 test images).
    #[arg(long, default_value_t = 5_000)]
    pub(crate) test: usize,
    /// Shards of the evaluation collections.
    #[arg(long, default_value_t = 8)]
    pub(crate) shards: u32,
    /// Neighbours per item when pruning scores the memory.
    #[arg(long, default_value_t = 10)]
    pub(crate) prune_k: usize,
    /// Hard pruning deletes items with v at or above this.
    #[arg(long, default_value_t = 5)]
    pub(crate) prune_threshold: u32,
    /// Seed of the label noise.
    #[arg(long, default_value_t = 7)]
    pub(crate) seed: u64,
    /// Markdown report.
    #[arg(long, default_value = "docs/evaluation.md")]
    pub(crate) out: PathBuf,
    /// Every number, for the plots (tools/plot_eval.py).
    #[arg(long, default_value = "target/eval/results.json")]
    pub(crate) results: PathBuf,
    /// Write `--out` again from `--results` (after a change to the
    /// report's wording), without a server or a run.
    #[arg(long)]
    pub(crate) report_only: bool,
}

pub(crate) struct Split {
    pub(crate) labels: Vec<u8>,
    pub(crate) vectors: Vec<Vec<f32>>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct RuleResult {
    pub(crate) rule: String,
    pub(crate) k_chosen: usize,
    pub(crate) validation_accuracy: f64,
    pub(crate) test_accuracy: f64,
    /// Test accuracy for k = 1..=100.
    pub(crate) test_by_k: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PruningResult {
    pub(crate) setting: String,
    pub(crate) items: u64,
    /// Test accuracy per rule at its chosen k.
    pub(crate) accuracy: BTreeMap<String, f64>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Results {
    pub(crate) date: String,
    pub(crate) memory: usize,
    pub(crate) validation: usize,
    pub(crate) test: usize,
    pub(crate) rules: Vec<RuleResult>,
    pub(crate) noise_levels: Vec<f64>,
    /// Per rule, test accuracy at each noise level.
    pub(crate) label_noise: BTreeMap<String, Vec<f64>>,
    pub(crate) pruning: Vec<PruningResult>,
    pub(crate) pruning_scored: Value,
    pub(crate) new_classes: Value,
    pub(crate) unlearning: Value,
    /// Section 6: the re-rankers (`eval_rerank`).
    #[serde(default)]
    pub(crate) reranking: Value,
    /// Wall time of the whole run and of its embedding phase.
    #[serde(default)]
    pub(crate) seconds_total: f64,
    #[serde(default)]
    pub(crate) seconds_embedding: f64,
}

fn params(rule: VotingRule) -> VoteParams {
    VoteParams {
        rule,
        ..VoteParams::default()
    }
}

fn embed(
    client: &Client,
    images: &IdxImages,
    labels: &[u8],
    indices: &[usize],
    what: &str,
) -> anyhow::Result<Split> {
    let bar = progress(indices.len(), what);
    let mut vectors = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(64) {
        let pngs = chunk
            .iter()
            .map(|&i| png_base64(images, i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let answer = client.post(
            &format!("/v1/collections/{EMBED_COLLECTION}/embed"),
            &json!({ "images": pngs }),
        )?;
        for v in answer["vectors"].as_array().context("no vectors")? {
            vectors.push(serde_json::from_value::<Vec<f32>>(v.clone())?);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(Split {
        labels: indices.iter().map(|&i| labels[i]).collect(),
        vectors,
    })
}

pub(crate) fn create(client: &Client, name: &str, dim: usize, shards: u32) -> anyhow::Result<()> {
    client.delete_collection(name)?;
    client.post(
        "/v1/collections",
        &json!({ "name": name, "dim": dim, "metric": "cosine", "shards": shards }),
    )?;
    Ok(())
}

/// Adds the items of `split` at positions `which` with ids `id_base + position`.
pub(crate) fn add(
    client: &Client,
    collection: &str,
    split: &Split,
    which: &[usize],
    what: &str,
) -> anyhow::Result<()> {
    let bar = progress(which.len(), what);
    for chunk in which.chunks(500) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                json!({
                    "id": i as u64,
                    "label": class_name(split.labels[i]),
                    "vector": split.vectors[i],
                    "source": format!("fashion-mnist/train#{i}"),
                })
            })
            .collect();
        client.post(
            &format!("/v1/collections/{collection}/items"),
            &json!({ "items": items }),
        )?;
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(())
}

/// The server's `classify/batch` answer for every query (rank rule, `k`),
/// 250 queries per request.
fn classify_all(
    client: &Client,
    collection: &str,
    queries: &[Vec<f32>],
    k: usize,
    what: &str,
) -> anyhow::Result<Vec<Value>> {
    classify_with(client, collection, queries, k, "rank", &json!(false), what)
}

/// [`classify_all`] with a voting `rule` and a `rerank` choice (a
/// re-ranker's name, or `false`).
pub(crate) fn classify_with(
    client: &Client,
    collection: &str,
    queries: &[Vec<f32>],
    k: usize,
    rule: &str,
    rerank: &Value,
    what: &str,
) -> anyhow::Result<Vec<Value>> {
    let bar = progress(queries.len(), what);
    let mut results = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(250) {
        let body: Vec<Value> = chunk.iter().map(|v| json!({ "vector": v })).collect();
        let answer = client.post(
            &format!("/v1/collections/{collection}/classify/batch"),
            &json!({ "queries": body, "k": k, "rule": rule, "rerank": rerank }),
        )?;
        for result in answer["results"].as_array().context("no results")? {
            if result["partial"] == json!(true) {
                bail!("a partial answer during evaluation: {result}");
            }
            results.push(result.clone());
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish();
    Ok(results)
}

/// The server's ranked neighbours (curation applied) for every query.
fn neighbours(
    client: &Client,
    collection: &str,
    queries: &[Vec<f32>],
    k: usize,
    what: &str,
) -> anyhow::Result<Vec<Vec<Neighbor>>> {
    classify_all(client, collection, queries, k, what)?
        .iter()
        .map(|result| {
            result["neighbors"]
                .as_array()
                .context("no neighbours")?
                .iter()
                .map(|n| Ok(serde_json::from_value::<Neighbor>(n.clone())?))
                .collect()
        })
        .collect()
}

fn accuracy(lists: &[Vec<Neighbor>], truth: &[u8], rule: VotingRule, k: usize) -> f64 {
    let params = params(rule);
    let correct = lists
        .iter()
        .zip(truth)
        .filter(|(list, t)| {
            let voters = list[..k.min(list.len())].to_vec();
            decide(voters, &params).label.as_deref() == Some(class_name(**t))
        })
        .count();
    correct as f64 / truth.len().max(1) as f64
}

fn by_k(lists: &[Vec<Neighbor>], truth: &[u8], rule: VotingRule) -> Vec<f64> {
    (1..=MAX_K)
        .map(|k| accuracy(lists, truth, rule, k))
        .collect()
}

/// The k with the best accuracy (the smallest on ties).
fn best_k(accuracies: &[f64]) -> usize {
    let mut best = 0;
    for (i, a) in accuracies.iter().enumerate() {
        if *a > accuracies[best] {
            best = i;
        }
    }
    best + 1
}

fn classify_labels(
    client: &Client,
    collection: &str,
    queries: &[Vec<f32>],
    k: usize,
) -> anyhow::Result<Vec<Option<String>>> {
    Ok(classify_all(client, collection, queries, k, "classifying")?
        .iter()
        .map(|r| r["label"].as_str().map(str::to_string))
        .collect())
}

fn share_correct(predicted: &[Option<String>], truth: &[u8], keep: impl Fn(u8) -> bool) -> f64 {
    let (mut n, mut correct) = (0usize, 0usize);
    for (p, t) in predicted.iter().zip(truth) {
        if keep(*t) {
            n += 1;
            correct += usize::from(p.as_deref() == Some(class_name(*t)));
        }
    }
    correct as f64 / n.max(1) as f64
}

pub(crate) fn pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    if args.report_only {
        let results: Results = serde_json::from_slice(&std::fs::read(&args.results)?)
            .with_context(|| format!("{} is not an eval result", args.results.display()))?;
        std::fs::write(&args.out, crate::eval_report::report(&results, &args))?;
        println!(
            "{} written from {}",
            args.out.display(),
            args.results.display()
        );
        return Ok(());
    }
    let started = Instant::now();
    let client = Client::connect(&args.server)?;
    client.wait_healthy(std::time::Duration::from_secs(120))?;
    let dir = &args.dataset_dir;
    let train_images = idx::read_images(&dir.join("train-images-idx3-ubyte.gz"))
        .with_context(|| format!("Fashion-MNIST not found in {}", dir.display()))?;
    let train_labels = idx::read_labels(&dir.join("train-labels-idx1-ubyte.gz"))?;
    let test_images = idx::read_images(&dir.join("t10k-images-idx3-ubyte.gz"))?;
    let test_labels = idx::read_labels(&dir.join("t10k-labels-idx1-ubyte.gz"))?;
    if args.memory > VALIDATION_START || VALIDATION_START + args.validation > train_images.count {
        bail!("the memory must end before image {VALIDATION_START}, where validation starts");
    }
    let n_test = args.test.min(test_images.count);

    // Embeddings, by the server's model.
    client.delete_collection(EMBED_COLLECTION)?;
    let embedder = client.post(
        "/v1/collections",
        &json!({ "name": EMBED_COLLECTION, "embedder": "default", "shards": 1 }),
    )?;
    let dim = embedder["dim"].as_u64().context("no dim")? as usize;
    let memory_ids: Vec<usize> = (0..args.memory).collect();
    let validation_ids: Vec<usize> =
        (VALIDATION_START..VALIDATION_START + args.validation).collect();
    let test_ids: Vec<usize> = (0..n_test).collect();
    let memory = embed(
        &client,
        &train_images,
        &train_labels,
        &memory_ids,
        "embedding memory",
    )?;
    let validation = embed(
        &client,
        &train_images,
        &train_labels,
        &validation_ids,
        "embedding validation",
    )?;
    let test = embed(
        &client,
        &test_images,
        &test_labels,
        &test_ids,
        "embedding test",
    )?;
    client.delete_collection(EMBED_COLLECTION)?;
    let embedded_at = started.elapsed().as_secs_f64();

    // 1. Accuracy per rule and k; k chosen on validation.
    create(&client, MEMORY, dim, args.shards)?;
    let everything: Vec<usize> = (0..args.memory).collect();
    add(&client, MEMORY, &memory, &everything, "building memory")?;
    let validation_lists = neighbours(
        &client,
        MEMORY,
        &validation.vectors,
        MAX_K,
        "validation k=100",
    )?;
    let test_lists = neighbours(&client, MEMORY, &test.vectors, MAX_K, "test k=100")?;
    let mut rules = Vec::new();
    for rule in VotingRule::ALL {
        let validation_by_k = by_k(&validation_lists, &validation.labels, rule);
        let k = best_k(&validation_by_k);
        let test_by_k = by_k(&test_lists, &test.labels, rule);
        rules.push(RuleResult {
            rule: rule.as_str().to_string(),
            k_chosen: k,
            validation_accuracy: validation_by_k[k - 1],
            test_accuracy: test_by_k[k - 1],
            test_by_k,
        });
    }
    let chosen: HashMap<VotingRule, usize> = VotingRule::ALL
        .iter()
        .zip(&rules)
        .map(|(r, res)| (*r, res.k_chosen))
        .collect();
    let at_chosen = |lists: &[Vec<Neighbor>]| -> BTreeMap<String, f64> {
        VotingRule::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str().to_string(),
                    accuracy(lists, &test.labels, *r, chosen[r]),
                )
            })
            .collect()
    };

    // 2. Label noise: a share of the memory's labels replaced by uniformly
    // random classes (which may hit the true one, as "random labels" do).
    let mut label_noise: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for level in NOISE_LEVELS {
        let mut rng = SplitMix64(args.seed ^ (level * 1000.0) as u64);
        let noisy: HashMap<u64, &str> = (0..args.memory)
            .map(|i| {
                let label = if rng.unit() < level {
                    FASHION_MNIST_CLASSES[rng.below(10) as usize]
                } else {
                    class_name(memory.labels[i])
                };
                (i as u64, label)
            })
            .collect();
        let lists: Vec<Vec<Neighbor>> = test_lists
            .iter()
            .map(|list| {
                list.iter()
                    .map(|n| Neighbor {
                        label: noisy[&n.id].to_string(),
                        ..n.clone()
                    })
                    .collect()
            })
            .collect();
        for (rule, acc) in at_chosen(&lists) {
            label_noise.entry(rule).or_default().push(acc);
        }
        // Many voters outvote random labels: the rank rule at k = 100 too.
        label_noise
            .entry(format!("rank, k={MAX_K}"))
            .or_default()
            .push(accuracy(&lists, &test.labels, VotingRule::Rank, MAX_K));
    }

    // 3. Pruning: none, soft, hard (each scored on the full memory).
    let mut pruning = vec![PruningResult {
        setting: "none".into(),
        items: args.memory as u64,
        accuracy: at_chosen(&test_lists),
    }];
    let job = client.post(
        &format!("/v1/collections/{MEMORY}/jobs"),
        &json!({ "kind": "prune", "mode": "soft", "k": args.prune_k }),
    )?;
    let soft = follow_job(
        &client,
        MEMORY,
        job["id"].as_u64().unwrap_or(0),
        "soft pruning",
    )?;
    let soft_lists = neighbours(&client, MEMORY, &test.vectors, MAX_K, "test, soft pruned")?;
    pruning.push(PruningResult {
        setting: format!("soft (k={}, gamma = 1.75 / (1 + v))", args.prune_k),
        items: args.memory as u64,
        accuracy: at_chosen(&soft_lists),
    });
    client.call(
        reqwest::Method::DELETE,
        &format!("/v1/collections/{MEMORY}/pruning"),
        None,
    )?;
    let job = client.post(
        &format!("/v1/collections/{MEMORY}/jobs"),
        &json!({ "kind": "prune", "mode": "hard", "k": args.prune_k, "threshold": args.prune_threshold }),
    )?;
    let hard = follow_job(
        &client,
        MEMORY,
        job["id"].as_u64().unwrap_or(0),
        "hard pruning",
    )?;
    let hard_lists = neighbours(&client, MEMORY, &test.vectors, MAX_K, "test, hard pruned")?;
    let info = client.get(&format!("/v1/collections/{MEMORY}"))?;
    pruning.push(PruningResult {
        setting: format!(
            "hard (k={}, delete v >= {})",
            args.prune_k, args.prune_threshold
        ),
        items: info["items"].as_u64().unwrap_or(0),
        accuracy: at_chosen(&hard_lists),
    });
    let pruning_scored = json!({
        "v_histogram": soft["report"]["v_histogram"],
        "soft_weighted_items": soft["report"]["weighted_items"],
        "hard_deleted": hard["report"]["deleted"],
    });
    client.delete_collection(MEMORY)?;

    // 4. New classes: a memory without two classes, then with them.
    let k_rank = chosen[&VotingRule::Rank];
    create(&client, NEW_MEMORY, dim, args.shards)?;
    let (new_items, old_items): (Vec<usize>, Vec<usize>) = everything
        .iter()
        .partition(|i| NEW_CLASSES.contains(&memory.labels[**i]));
    add(
        &client,
        NEW_MEMORY,
        &memory,
        &old_items,
        "memory without 2 classes",
    )?;
    let is_new = |t: u8| NEW_CLASSES.contains(&t);
    let before = classify_labels(&client, NEW_MEMORY, &test.vectors, k_rank)?;
    let added_at = Instant::now();
    add(
        &client,
        NEW_MEMORY,
        &memory,
        &new_items,
        "adding the 2 classes",
    )?;
    let add_seconds = added_at.elapsed().as_secs_f64();
    let after = classify_labels(&client, NEW_MEMORY, &test.vectors, k_rank)?;
    let full_new = share_correct(
        &test_lists
            .iter()
            .map(|l| decide(l[..k_rank.min(l.len())].to_vec(), &params(VotingRule::Rank)).label)
            .collect::<Vec<_>>(),
        &test.labels,
        is_new,
    );
    let new_classes = json!({
        "classes": NEW_CLASSES.iter().map(|c| class_name(*c)).collect::<Vec<_>>(),
        "k": k_rank,
        "items_added": new_items.len(),
        "add_seconds": add_seconds,
        "old_before": share_correct(&before, &test.labels, |t| !is_new(t)),
        "old_after": share_correct(&after, &test.labels, |t| !is_new(t)),
        "new_before": share_correct(&before, &test.labels, is_new),
        "new_after": share_correct(&after, &test.labels, is_new),
        "new_with_full_memory_from_the_start": full_new,
        "old_now_predicted_as_new": after
            .iter()
            .zip(&test.labels)
            .filter(|(p, t)| {
                !is_new(**t)
                    && NEW_CLASSES.iter().any(|c| p.as_deref() == Some(class_name(*c)))
            })
            .count(),
    });

    // 5. Unlearning: delete a class; its images are never classified as it.
    let class = class_name(UNLEARNED);
    let deleted = client.post(
        &format!("/v1/collections/{NEW_MEMORY}/items/delete"),
        &json!({ "label": class }),
    )?;
    let receipt = deleted["receipt"].as_u64().unwrap_or(0);
    let status_before = client.get(&format!(
        "/v1/collections/{NEW_MEMORY}/unlearning/{receipt}"
    ))?;
    let lists = neighbours(
        &client,
        NEW_MEMORY,
        &test.vectors,
        MAX_K,
        "test after unlearning",
    )?;
    let neighbours_of_class = lists.iter().flatten().filter(|n| n.label == class).count();
    let mut predicted_as_class = 0;
    let mut became: BTreeMap<String, usize> = BTreeMap::new();
    for (list, t) in lists.iter().zip(&test.labels) {
        let label = decide(
            list[..k_rank.min(list.len())].to_vec(),
            &params(VotingRule::Rank),
        )
        .label;
        if label.as_deref() == Some(class) {
            predicted_as_class += 1;
        }
        if *t == UNLEARNED {
            *became.entry(label.unwrap_or_default()).or_default() += 1;
        }
    }
    client.post(&format!("/v1/collections/{NEW_MEMORY}/compact"), &json!({}))?;
    let status_after = client.get(&format!(
        "/v1/collections/{NEW_MEMORY}/unlearning/{receipt}"
    ))?;
    let unlearning = json!({
        "class": class,
        "deleted": deleted["deleted"],
        "test_images_of_class": test.labels.iter().filter(|t| **t == UNLEARNED).count(),
        "predicted_as_class": predicted_as_class,
        "neighbours_with_class_at_k100": neighbours_of_class,
        "its_images_became": became,
        "status_before_compaction": status_before["status"],
        "present_before_compaction": status_before["present_in"],
        "status_after_compaction": status_after["status"],
    });
    client.delete_collection(NEW_MEMORY)?;

    // 6. Re-rankers: the head and the example http re-ranker.
    let reranking = crate::eval_rerank::run(&crate::eval_rerank::Setup {
        client: &client,
        memory: &memory,
        test: &test,
        dim,
        shards: args.shards,
        k_rank,
        k_softmax: chosen[&VotingRule::Softmax],
        seed: args.seed,
    })?;

    let results = Results {
        date: engram_cli::client::today(),
        memory: args.memory,
        validation: args.validation,
        test: n_test,
        rules,
        noise_levels: NOISE_LEVELS.to_vec(),
        label_noise,
        pruning,
        pruning_scored,
        new_classes,
        unlearning,
        reranking,
        seconds_total: started.elapsed().as_secs_f64(),
        seconds_embedding: embedded_at,
    };
    if let Some(parent) = args.results.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.results, serde_json::to_vec_pretty(&results)?)?;
    let markdown = crate::eval_report::report(&results, &args);
    std::fs::write(&args.out, markdown)?;
    println!(
        "evaluation written to {} and {} in {:.0} s",
        args.out.display(),
        args.results.display(),
        started.elapsed().as_secs_f64()
    );
    if results.unlearning["predicted_as_class"] != json!(0) {
        bail!("an unlearned class was still predicted");
    }
    Ok(())
}
