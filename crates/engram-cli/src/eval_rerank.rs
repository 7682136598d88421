//! `engram eval`, section 6: the paper's second stage through the server's
//! re-rankers: the built-in head (`head`, trained by `train_head` jobs)
//! and the example http re-ranker (`example`, examples/rerankers/), each
//! fused with the votes. Every decision comes from the server's
//! `classify/batch` with `"rerank"`; the answer carries the votes' own
//! decision, the re-ranker's alone and the fused one, so the three
//! accuracies come from the same answers. Other mixes are fused here with
//! `engram_core::rerank::fuse`, the server's function, from the same
//! answers' vote totals and re-ranker scores.

use anyhow::bail;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use engram_cli::client::{Client, class_name};
use engram_cli::rng::SplitMix64;
use engram_core::rerank::fuse;
use engram_ingest::idx::FASHION_MNIST_CLASSES;

use crate::eval::{NEW_CLASSES, NOISE_LEVELS, Split, UNLEARNED, add, classify_with, create, pct};
use crate::prune::follow_job;

/// The re-rankers `scripts/eval.sh` configures.
const HEAD: &str = "head";
const EXAMPLE: &str = "example";
const COLLECTION: &str = "eval-rerank";
const MIXES: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];
/// Single-query requests timed per setting.
const LATENCY_QUERIES: usize = 1_000;

pub(crate) struct Setup<'a> {
    pub client: &'a Client,
    pub memory: &'a Split,
    pub test: &'a Split,
    pub dim: usize,
    pub shards: u32,
    pub k_rank: usize,
    pub k_softmax: usize,
    pub seed: u64,
}

/// `classify/batch` answers for every query of the eval's collection.
fn classify(
    client: &Client,
    queries: &[Vec<f32>],
    k: usize,
    rule: &str,
    rerank: &str,
    what: &str,
) -> anyhow::Result<Vec<Value>> {
    classify_with(client, COLLECTION, queries, k, rule, &json!(rerank), what)
}

/// Accuracy of the votes, the re-ranker alone and the fused decision over
/// the test images `keep` selects, and how many answers were not `ok`.
fn three(answers: &[Value], truth: &[u8], keep: impl Fn(u8) -> bool) -> Value {
    let (mut n, mut votes, mut alone, mut fused, mut not_ok) = (0, 0, 0, 0, 0);
    for (answer, t) in answers.iter().zip(truth) {
        if !keep(*t) {
            continue;
        }
        n += 1;
        let right = |v: &Value| usize::from(v.as_str() == Some(class_name(*t)));
        let rerank = &answer["rerank"];
        votes += right(&rerank["vote_label"]);
        alone += right(&rerank["reranker_label"]);
        fused += right(&answer["label"]);
        not_ok += usize::from(rerank["status"] != "ok");
    }
    let share = |c: usize| c as f64 / f64::from(n.max(1) as u32);
    json!({ "votes": share(votes), "reranker": share(alone), "fused": share(fused), "not_ok": not_ok, "images": n })
}

/// Accuracy of the fused decision at each of [`MIXES`].
fn mix_sweep(answers: &[Value], truth: &[u8]) -> Vec<f64> {
    let map = |v: &Value| -> BTreeMap<String, f64> {
        serde_json::from_value(v.clone()).unwrap_or_default()
    };
    MIXES
        .iter()
        .map(|&mix| {
            let right = answers
                .iter()
                .zip(truth)
                .filter(|(a, t)| {
                    let fused = fuse(&map(&a["votes"]), &map(&a["rerank"]["scores"]), mix);
                    fused.label.as_deref() == Some(class_name(**t))
                })
                .count();
            right as f64 / truth.len().max(1) as f64
        })
        .collect()
}

/// Trains the head on the collection; its final job status.
fn train(client: &Client, what: &str) -> anyhow::Result<Value> {
    let job = client.post(
        &format!("/v1/collections/{COLLECTION}/jobs"),
        &json!({ "kind": "train_head", "reranker": HEAD }),
    )?;
    follow_job(client, COLLECTION, job["id"].as_u64().unwrap_or(0), what)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// p50/p99 of single `classify` requests (client wall time) and of the
/// re-ranker's own `latency_ms`, for `rerank` (`false`: votes alone).
fn latency(
    client: &Client,
    queries: &[Vec<f32>],
    k: usize,
    rerank: Value,
) -> anyhow::Result<Value> {
    let mut wall = Vec::with_capacity(queries.len());
    let mut own = Vec::new();
    let mut not_ok = 0;
    for q in queries {
        let started = Instant::now();
        let answer = client.post(
            &format!("/v1/collections/{COLLECTION}/classify"),
            &json!({ "vector": q, "k": k, "rule": "rank", "rerank": rerank }),
        )?;
        wall.push(started.elapsed().as_secs_f64() * 1e3);
        if let Some(ms) = answer["rerank"]["latency_ms"].as_f64() {
            own.push(ms);
            not_ok += usize::from(answer["rerank"]["status"] != "ok");
        }
    }
    wall.sort_by(f64::total_cmp);
    own.sort_by(f64::total_cmp);
    Ok(json!({
        "queries": queries.len(),
        "p50_ms": percentile(&wall, 0.5),
        "p99_ms": percentile(&wall, 0.99),
        "reranker_p50_ms": percentile(&own, 0.5),
        "reranker_p99_ms": percentile(&own, 0.99),
        "not_ok": not_ok,
    }))
}

/// The memory's labels with a share replaced by uniformly random classes,
/// drawn exactly as section 3 draws them (same seed per level).
fn noisy(memory: &Split, seed: u64, level: f64) -> Split {
    let mut rng = SplitMix64(seed ^ (level * 1000.0) as u64);
    let labels = memory
        .labels
        .iter()
        .map(|&l| {
            if rng.unit() < level {
                rng.below(10) as u8
            } else {
                l
            }
        })
        .collect();
    Split {
        labels,
        vectors: memory.vectors.clone(),
    }
}

fn receipt_lists_head(status: &Value) -> bool {
    status["places"]
        .as_array()
        .is_some_and(|places| places.iter().any(|p| p["kind"] == "head"))
}

pub(crate) fn run(s: &Setup<'_>) -> anyhow::Result<Value> {
    let client = s.client;
    let everything: Vec<usize> = (0..s.memory.labels.len()).collect();
    let truth = &s.test.labels;

    // 6.1 Votes, head, fused; and the http example.
    create(client, COLLECTION, s.dim, s.shards)?;
    add(
        client,
        COLLECTION,
        s.memory,
        &everything,
        "memory for re-ranking",
    )?;
    let started = Instant::now();
    let head = train(client, "training the head")?;
    let train_seconds = started.elapsed().as_secs_f64();
    let rank = classify(
        client,
        &s.test.vectors,
        s.k_rank,
        "rank",
        HEAD,
        "head, rank",
    )?;
    let softmax = classify(
        client,
        &s.test.vectors,
        s.k_softmax,
        "softmax",
        HEAD,
        "head, softmax",
    )?;
    let example = classify(
        client,
        &s.test.vectors,
        s.k_rank,
        "rank",
        EXAMPLE,
        "example, rank",
    )?;
    let all = |_: u8| true;
    let sample = &s.test.vectors[..LATENCY_QUERIES.min(s.test.vectors.len())];
    let latencies = json!({
        "votes": latency(client, sample, s.k_rank, json!(false))?,
        "head": latency(client, sample, s.k_rank, json!(HEAD))?,
        "example": latency(client, sample, s.k_rank, json!(EXAMPLE))?,
    });

    // 6.2 Label noise: the head trained on the noisy memory.
    let mut noise = vec![json!({ "level": 0.0, "accuracy": three(&rank, truth, all) })];
    for &level in &NOISE_LEVELS[1..] {
        let memory = noisy(s.memory, s.seed, level);
        create(client, COLLECTION, s.dim, s.shards)?;
        add(
            client,
            COLLECTION,
            &memory,
            &everything,
            &format!("memory, {:.0}% noise", level * 100.0),
        )?;
        train(client, "training the head")?;
        let answers = classify(
            client,
            &s.test.vectors,
            s.k_rank,
            "rank",
            HEAD,
            "head, rank",
        )?;
        noise.push(json!({ "level": level, "accuracy": three(&answers, truth, all) }));
    }

    // 6.3 New classes: a head trained without them, then retrained.
    create(client, COLLECTION, s.dim, s.shards)?;
    let (new_items, old_items): (Vec<usize>, Vec<usize>) = everything
        .iter()
        .partition(|i| NEW_CLASSES.contains(&s.memory.labels[**i]));
    add(
        client,
        COLLECTION,
        s.memory,
        &old_items,
        "memory without 2 classes",
    )?;
    train(client, "training the head")?;
    add(
        client,
        COLLECTION,
        s.memory,
        &new_items,
        "adding the 2 classes",
    )?;
    let is_new = |t: u8| NEW_CLASSES.contains(&t);
    let before = classify(
        client,
        &s.test.vectors,
        s.k_rank,
        "rank",
        HEAD,
        "head not retrained",
    )?;
    train(client, "retraining the head")?;
    let after = classify(
        client,
        &s.test.vectors,
        s.k_rank,
        "rank",
        HEAD,
        "head retrained",
    )?;
    let new_classes = json!({
        "not_retrained": { "new": three(&before, truth, is_new), "old": three(&before, truth, |t| !is_new(t)) },
        "retrained": { "new": three(&after, truth, is_new), "old": three(&after, truth, |t| !is_new(t)) },
    });

    // 6.4 Unlearning a class across the head.
    let class = class_name(UNLEARNED);
    let deleted = client.post(
        &format!("/v1/collections/{COLLECTION}/items/delete"),
        &json!({ "label": class }),
    )?;
    let receipt = deleted["receipt"].as_u64().unwrap_or(0);
    let receipt_path = format!("/v1/collections/{COLLECTION}/unlearning/{receipt}");
    let status_deleted = client.get(&receipt_path)?;
    let stale = classify(
        client,
        &s.test.vectors,
        s.k_rank,
        "rank",
        HEAD,
        "head stale",
    )?;
    let predicted = |answers: &[Value], field: &dyn Fn(&Value) -> Value| {
        answers
            .iter()
            .filter(|a| field(a).as_str() == Some(class))
            .count()
    };
    let stale_skipped = stale
        .iter()
        .filter(|a| a["rerank"]["status"] == "skipped")
        .count();
    let stale_votes = predicted(&stale, &|a| a["label"].clone());
    train(client, "retraining without the class")?;
    let status_retrained = client.get(&receipt_path)?;
    let retrained = classify(
        client,
        &s.test.vectors,
        s.k_rank,
        "rank",
        HEAD,
        "head retrained",
    )?;
    client.post(&format!("/v1/collections/{COLLECTION}/compact"), &json!({}))?;
    let status_compacted = client.get(&receipt_path)?;
    let unlearning = json!({
        "class": class,
        "deleted": deleted["deleted"],
        "receipt_lists_head_after_delete": receipt_lists_head(&status_deleted),
        "stale_answers_skipped": stale_skipped,
        "predicted_by_votes_while_stale": stale_votes,
        "receipt_lists_head_after_retraining": receipt_lists_head(&status_retrained),
        "predicted_by_votes": predicted(&retrained, &|a| a["rerank"]["vote_label"].clone()),
        "predicted_by_head": predicted(&retrained, &|a| a["rerank"]["reranker_label"].clone()),
        "predicted_fused": predicted(&retrained, &|a| a["label"].clone()),
        "retrained_ok": retrained.iter().filter(|a| a["rerank"]["status"] == "ok").count(),
        "status_after_compaction": status_compacted["status"],
    });
    client.delete_collection(COLLECTION)?;
    if unlearning["predicted_fused"] != json!(0) || unlearning["predicted_by_head"] != json!(0) {
        bail!("the retrained head still predicts an unlearned class: {unlearning}");
    }
    Ok(json!({
        "k_rank": s.k_rank,
        "k_softmax": s.k_softmax,
        "head": {
            "train_seconds": train_seconds,
            "rows": head["report"]["rows"],
            "train_accuracy": head["report"]["train_accuracy"],
            "params": head["params"],
        },
        "rank": three(&rank, truth, all),
        "softmax": three(&softmax, truth, all),
        "mixes": MIXES,
        "rank_by_mix": mix_sweep(&rank, truth),
        "example": three(&example, truth, all),
        "example_by_mix": mix_sweep(&example, truth),
        "latency": latencies,
        "noise": noise,
        "new_classes": new_classes,
        "unlearning": unlearning,
    }))
}

fn f(v: &Value) -> String {
    pct(v.as_f64().unwrap_or(f64::NAN))
}

/// A table's three accuracy cells: votes, re-ranker alone, **fused**.
fn cells(a: &Value) -> String {
    format!(
        "{} | {} | **{}**",
        f(&a["votes"]),
        f(&a["reranker"]),
        f(&a["fused"])
    )
}

fn ms(v: &Value) -> String {
    format!("{:.2}", v.as_f64().unwrap_or(f64::NAN))
}

/// Section 6 of docs/evaluation.md.
pub(crate) fn report(w: &mut String, r: &Value) {
    let (kr, ks) = (&r["k_rank"], &r["k_softmax"]);
    let _ = writeln!(w, "\n## 6. Re-rankers: the second stage\n");
    let _ = writeln!(
        w,
        "The paper's second stage hands the neighbours to a model. Here the server's two kinds, each fused with the votes as `(1 - mix) * vote share + mix * re-ranker share`: the built-in **head** (softmax regression on the embeddings, trained by a `train_head` job from the memory: {} rows, train accuracy {}, {:.1} s; mix 0.5) and the **example** http re-ranker (examples/rerankers/softmax_reranker.py: a softmax over the neighbours' distances, tau 0.05; mix 0.5). Every number below comes from the server's answers: `rerank.vote_label` (votes), `rerank.reranker_label` (the re-ranker alone) and `label` (fused).\n",
        r["head"]["rows"],
        f(&r["head"]["train_accuracy"]),
        r["head"]["train_seconds"].as_f64().unwrap_or(0.0),
    );
    let _ = writeln!(
        w,
        "| rule (k) | votes | re-ranker alone | **fused** | answers not ok |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|");
    for (name, key, k) in [
        ("head, rank", "rank", kr),
        ("head, softmax", "softmax", ks),
        ("example (http), rank", "example", kr),
    ] {
        let a = &r[key];
        let _ = writeln!(w, "| {name} (k={k}) | {} | {} |", cells(a), a["not_ok"]);
    }
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let gain = |a: &Value| 100.0 * (num(&a["fused"]) - num(&a["votes"]));
    let _ = writeln!(
        w,
        "\nFused with the head, the rank rule goes {} -> {} ({:+.2} points) and softmax {} -> {} ({:+.2}); the head alone reaches {}. The example re-ranker is itself a vote over the same neighbours (a softmax of their distances), so it moves the decision by {:+.2} points: it is there to show the contract and its cost, not to win.",
        f(&r["rank"]["votes"]),
        f(&r["rank"]["fused"]),
        gain(&r["rank"]),
        f(&r["softmax"]["votes"]),
        f(&r["softmax"]["fused"]),
        gain(&r["softmax"]),
        f(&r["rank"]["reranker"]),
        gain(&r["example"]),
    );
    let _ = writeln!(
        w,
        "\nThe fused accuracy at other mixes (same answers, fused with `engram_core::rerank::fuse`):\n"
    );
    let mixes: Vec<String> = r["mixes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| format!("mix {m}"))
        .collect();
    let _ = writeln!(w, "| re-ranker (rank, k={kr}) | {} |", mixes.join(" | "));
    let _ = writeln!(w, "|---|{}", "---|".repeat(mixes.len()));
    for (name, key) in [("head", "rank_by_mix"), ("example", "example_by_mix")] {
        let cells: Vec<String> = r[key].as_array().into_iter().flatten().map(f).collect();
        let _ = writeln!(w, "| {name} | {} |", cells.join(" | "));
    }
    let l = &r["latency"];
    let _ = writeln!(
        w,
        "\n### Latency per query\n\n{} single `classify` requests (rank, k={kr}), one at a time from the eval client over loopback; \"re-ranker\" is the answer's own `rerank.latency_ms` (the call alone).\n",
        l["votes"]["queries"]
    );
    let _ = writeln!(
        w,
        "| setting | p50 ms | p99 ms | re-ranker p50 ms | re-ranker p99 ms | not ok |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    for (name, key) in [
        ("votes alone", "votes"),
        ("head", "head"),
        ("example (http)", "example"),
    ] {
        let x = &l[key];
        let own = |v: &Value| if v.is_number() { ms(v) } else { "-".into() };
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {} | {} | {} |",
            ms(&x["p50_ms"]),
            ms(&x["p99_ms"]),
            own(&x["reranker_p50_ms"]),
            own(&x["reranker_p99_ms"]),
            x["not_ok"]
        );
    }
    let added = |key: &str, q: &str| num(&l[key][q]) - num(&l["votes"][q]);
    let _ = writeln!(
        w,
        "\nThe head adds {:.2} ms at p50 (its own call: {:.0} µs, in process); the http example adds {:.2} ms at p50 (its call: {} ms at p50 over loopback, a Python standard-library server encoding and decoding the 1280-d query and its neighbours as JSON). At p99 the differences are within this run's noise (votes alone {}, head {}, example {} ms).",
        added("head", "p50_ms"),
        num(&l["head"]["reranker_p50_ms"]) * 1e3,
        added("example", "p50_ms"),
        ms(&l["example"]["reranker_p50_ms"]),
        ms(&l["votes"]["p99_ms"]),
        ms(&l["head"]["p99_ms"]),
        ms(&l["example"]["p99_ms"]),
    );
    let _ = writeln!(
        w,
        "\n### Label noise\n\nThe memory stored with the noisy labels of section 3 (same seed), the head trained on it (rank, k={kr}):\n"
    );
    let _ = writeln!(w, "| random labels | votes | head alone | **fused** |");
    let _ = writeln!(w, "|---|---|---|---|");
    for level in r["noise"].as_array().into_iter().flatten() {
        let a = &level["accuracy"];
        let _ = writeln!(
            w,
            "| {:.0}% | {} |",
            level["level"].as_f64().unwrap_or(0.0) * 100.0,
            cells(a)
        );
    }
    if let Some(worst) = r["noise"].as_array().and_then(|n| n.last()) {
        let a = &worst["accuracy"];
        let _ = writeln!(
            w,
            "\nAt {:.0}% random labels the votes fall to {}, the head alone holds {} (a linear model trained on every row averages label noise away where the nearest few neighbours cannot) and the fused decision reaches {}: with mix 0.5 the head lifts the votes under noise, and a memory known to be noisy can weight the head more (`mix`). The memory keeps its own remedies beside it: more voters (section 3's rank at k = 100) and pruning (section 4).",
            worst["level"].as_f64().unwrap_or(0.0) * 100.0,
            f(&a["votes"]),
            f(&a["reranker"]),
            f(&a["fused"]),
        );
    }
    let n = &r["new_classes"];
    let _ = writeln!(
        w,
        "\n### New classes\n\nThe head trained on the memory without {:?}; the classes added; then the head retrained (rank, k={kr}):\n",
        NEW_CLASSES
            .iter()
            .map(|c| FASHION_MNIST_CLASSES[*c as usize])
            .collect::<Vec<_>>()
    );
    let _ = writeln!(
        w,
        "| test images of | head | votes | head alone | **fused** |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|");
    for (state, key) in [
        ("not retrained", "not_retrained"),
        ("retrained", "retrained"),
    ] {
        for (which, part) in [("the 2 new classes", "new"), ("the 8 old classes", "old")] {
            let a = &n[key][part];
            let _ = writeln!(w, "| {which} | {state} | {} |", cells(a));
        }
    }
    let stale_new = &n["not_retrained"]["new"];
    let _ = writeln!(
        w,
        "\nUntil it is retrained the head knows nothing of the new classes ({} alone) and pulls the fused decision on them from the votes' {} down to {}; retrained, {}. Adding rows does not make a head stale (what it learned is still true of the memory, only incomplete), so after adding classes retrain it: a `train_head` job over this memory takes seconds.",
        f(&stale_new["reranker"]),
        f(&stale_new["votes"]),
        f(&stale_new["fused"]),
        f(&n["retrained"]["new"]["fused"]),
    );
    let u = &r["unlearning"];
    let _ = writeln!(
        w,
        "\n### Unlearning a class across the head\n\nAll {} items labelled {} were deleted. Right after the delete the receipt lists the head as a place still holding them: {}; the head is stale, so {} of {} answers skipped it and the votes decided ({} test images classified as {}). After a `train_head` job the receipt lists the head: {}; of the test images, {} are classified as {} by the votes, {} by the retrained head alone and {} fused ({} answers re-ranked ok). After compaction the receipt is `{}`.",
        u["deleted"],
        u["class"],
        u["receipt_lists_head_after_delete"],
        u["stale_answers_skipped"],
        r["rank"]["images"],
        u["predicted_by_votes_while_stale"],
        u["class"],
        u["receipt_lists_head_after_retraining"],
        u["predicted_by_votes"],
        u["class"],
        u["predicted_by_head"],
        u["predicted_fused"],
        u["retrained_ok"],
        u["status_after_compaction"].as_str().unwrap_or("?"),
    );
}
