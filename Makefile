# Engram: `make demo` runs the main job on the embedded default,
# `make test` runs every test. Both install what they need first.
SHELL := /bin/bash
CARGO ?= cargo
# The ONNX Runtime library inside .venv, found after `setup` has run.
ORT_DYLIB_PATH = $(shell scripts/ort_dylib_path.sh 2>/dev/null)
export ORT_DYLIB_PATH
# Tests use optimised dependencies (see Cargo.toml) and run in the dev profile.
CARGO_TEST_FLAGS ?= --workspace

.PHONY: all setup build demo demo-secure eval test test-engines chaos chaos-two-faults fuzz bench bench-index bench-ingest bench-embed bench-cluster bench-scale bench-recover lint fmt clean serve cluster cluster-stop

all: build

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --bin engram

## Builds, starts the embedded server, builds a Fashion-MNIST memory through
## the API, classifies, explains, unlearns and re-adds a class, stops.
demo: build
	@scripts/demo.sh

## The demo with every guard on: the loopback cluster of `make cluster` with TLS and a
## generated cluster secret and public API keys; checks the 401s and 403s,
## runs the demo client with the full key, stops the cluster.
demo-secure: build
	@scripts/demo_secure.sh

## The paper's experiments in kind on Fashion-MNIST (accuracy per rule and k,
## new classes, label noise, pruning, unlearning, re-rankers: the head and the
## example http re-ranker): writes docs/evaluation.md and its plots. About 16
## minutes on 2 cores.
eval: build
	@scripts/eval.sh

serve: build
	$(CARGO) run --bin engram -- serve --config config/embedded.toml

## Three coordinators (API on 127.0.0.1:7700-7702) and three workers on
## loopback, data under data/cluster; `make cluster-stop` ends them.
cluster: build
	@deploy/local/cluster.sh start

cluster-stop:
	@deploy/local/cluster.sh stop

test: setup
	$(CARGO) test $(CARGO_TEST_FLAGS)

## The Spark and Ray examples (examples/*/embed_parts.py) run for real: a
## local Spark (local[2]) and a local Ray, 4 parts each, against moto_server
## on 127.0.0.1; the parts they write must hold exactly the rows of one
## `engram embed --part 0/1` run. Installs pyspark and ray into .venv-engines
## (about 1 GB); needs Java 17+. Not part of `make test`; about 30 s on 2
## cores once installed. ENGRAM_BIN=path runs it with another binary.
test-engines: build
	@scripts/test_engines.sh

## The chaos run of docs/reliability.md: a loopback cluster under mixed load
## while processes are killed (-9), paused, their disks filled and the
## network between them cut (partitions, one-way, the Raft leader cut off),
## and the collection is resharded online back and forth; 100 kills by
## default (`make test` runs 10). Prints
## `chaos kills=.. acked=.. lost=.. resurrected=.. errors=..`.
## `make chaos-two-faults`: the same with two faults at a time on two
## processes, every shard on 3 workers (replication 3).
CHAOS_KILLS ?= 100
chaos: setup
	ENGRAM_CHAOS_KILLS=$(CHAOS_KILLS) ENGRAM_CHAOS_DISK_FULL=1 ENGRAM_CHAOS_PARTITIONS=1 $(CARGO) test -p engram-cli --test chaos -- --nocapture

chaos-two-faults: setup
	ENGRAM_CHAOS_KILLS=$(CHAOS_KILLS) ENGRAM_CHAOS_DISK_FULL=1 ENGRAM_CHAOS_PARTITIONS=1 ENGRAM_CHAOS_AT_ONCE=2 ENGRAM_CHAOS_REPLICATION=3 $(CARGO) test -p engram-cli --test chaos -- --nocapture

## cargo-fuzz targets (WAL reader, segment manifest, Raft log, Parquet rows)
## for FUZZ_SECONDS each (default 60) on nightly; installs cargo-fuzz.
fuzz:
	@scripts/fuzz.sh

## Benchmarks: criterion benches plus the side-by-side comparison with
## Python onnxruntime on the same ONNX file (writes target/bench-results).
bench: setup
	@scripts/bench.sh

## Engram's DiskANN segments beside faiss, hnswlib, scann and diskannpy
## (installed into .bench-venv*); sealed segments with cache budgets of 0,
## 10% and 100% (CACHE_BUDGETS); long: see scripts/bench_index.sh for sizes.
bench-index: setup
	@scripts/bench_index.sh

## Ingestion throughput (1M embeddings, 5k images in Parquet) beside faiss
## HNSW add and a Python onnxruntime loop.
bench-ingest: setup
	@scripts/bench_ingest.sh

## `engram embed` images/s at batch 32 and 64 beside a Python onnxruntime
## loop (same file, model, batch, threads); PROVIDER=cuda on a GPU machine.
bench-embed: setup
	@scripts/bench_embed.sh

## Query latency and QPS through the API: 100k real embeddings on the embedded
## node at the default shard count beside 1 shard; the same synthetic data
## through a coordinator at the default count and 1, 2, 4, 8 shards, and
## with 4 and 16 sealed segments per shard before and after merging (about
## 40 minutes; PARTS="real embedded cluster" picks parts).
bench-cluster: setup
	@scripts/bench_cluster.sh

## Engram at 1M and 10M vectors (long, about an hour; not in CI): clustered
## 128-d rows bulk-loaded into the loopback cluster of `make cluster`, then
## recall, latency, QPS, build rate, RAM and disk per vector, and the
## 10M/1M ratios (`scale n=...` lines; SCALES="1000000" for a short run).
bench-scale: setup
	@scripts/bench_scale.sh

## How a shard copy that fell behind heals (long, ~15 minutes; not in CI): a
## replica of a 1M-row shard misses 1,000 writes and catches up by delta,
## then by rows (the behaviour before write positions), in the loopback
## cluster (`recover kind=... bytes= seconds=` lines; N=, WRITES= to vary).
bench-recover: setup
	@scripts/bench_recover.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf data
