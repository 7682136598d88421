"""The client against a real Engram server.

Run by crates/engram-cli/tests/python_client.rs (in `make test`), which starts
an embedded server with API keys and sets:
  ENGRAM_URL, ENGRAM_API_KEY (full), ENGRAM_READ_ONLY_API_KEY,
  ENGRAM_TEST_PARQUET (a Parquet file of 8-d embeddings under the server's
  local roots, ids 1000-1099, labels "p0".."p4").
"""

import io
import os
import subprocess
import sys
import unittest
import uuid

import numpy as np

from engram_client import Decision, Engram, EngramError, Hit, JobFailed

URL = os.environ["ENGRAM_URL"]
FULL = os.environ["ENGRAM_API_KEY"]
READ = os.environ["ENGRAM_READ_ONLY_API_KEY"]
HERE = os.path.dirname(os.path.abspath(__file__))


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def clusters(n_per_label: int, labels, dim: int = 8, seed: int = 7):
    """Points around one centre per label, far apart."""
    rng = np.random.default_rng(seed)
    ids, names, rows = [], [], []
    for li, label in enumerate(labels):
        centre = np.zeros(dim, dtype=np.float32)
        centre[li % dim] = 10.0 * (1 + li // dim)
        for j in range(n_per_label):
            ids.append(li * 100_000 + j)
            names.append(label)
            rows.append(centre + rng.normal(0, 0.5, dim).astype(np.float32))
    return ids, names, np.stack(rows)


class VectorsTest(unittest.TestCase):
    def setUp(self):
        self.e = Engram(URL, api_key=FULL)
        self.name = fresh("vectors")
        self.e.create_collection(self.name, dim=8, metric="l2")

    def tearDown(self):
        self.e.delete_collection(self.name)

    def test_add_search_classify_in_batches(self):
        ids, labels, vectors = clusters(1_250, ["a", "b"])
        # 2,500 items in batches of 1,000: three requests.
        self.assertEqual(self.e.add(self.name, ids=ids, labels=labels, vectors=vectors), 2_500)
        info = self.e.get_collection(self.name)
        self.assertEqual(info.items, 2_500)
        self.assertEqual(info.labels, {"a": 1_250, "b": 1_250})

        hits = self.e.search(self.name, vector=vectors[3], k=5)
        self.assertEqual(len(hits), 5)
        self.assertIsInstance(hits[0], Hit)
        self.assertEqual(hits[0].id, ids[3])
        self.assertEqual(hits[0].label, "a")
        self.assertAlmostEqual(hits[0].distance, 0.0, places=3)
        self.assertFalse(hits.partial)
        self.assertTrue(all(h.distance <= g.distance for h, g in zip(hits, hits[1:])))

        decision = self.e.classify(self.name, vector=vectors[-1], k=10, rule="rank")
        self.assertIsInstance(decision, Decision)
        self.assertEqual(decision.label, "b")
        self.assertGreater(decision.confidence, 0.99)
        self.assertEqual(set(decision.votes), {"b"})
        self.assertEqual(len(decision.neighbors), 10)

        queries = np.stack([vectors[0], vectors[-1], vectors[1]])
        decisions = self.e.classify_batch(self.name, vectors=queries, k=5, batch_size=2)
        self.assertEqual([d.label for d in decisions], ["a", "b", "a"])

    def test_delete_gives_a_receipt_that_follows_the_bytes(self):
        ids, labels, vectors = clusters(20, ["a", "b"])
        sources = ["s1" if i % 2 else "s2" for i in range(len(ids))]
        self.e.add(self.name, ids=ids, labels=labels, vectors=vectors, sources=sources)
        by_id = self.e.delete(self.name, ids=[ids[0], ids[1], 999_999_999])
        self.assertEqual(by_id.deleted, 2)
        self.assertIsNotNone(by_id.receipt)
        by_label = self.e.delete(self.name, label="b")
        self.assertEqual(by_label.deleted, 20)
        nothing = self.e.delete(self.name, label="b")
        self.assertEqual((nothing.deleted, nothing.receipt), (0, None))
        report = self.e.unlearning(self.name, by_label.receipt)
        self.assertEqual(report["deleted"], 20)
        self.assertIn(report["status"], ["deleted", "erased"])
        hits = self.e.search(self.name, vector=vectors[-1], k=50)
        self.assertNotIn("b", {h.label for h in hits})
        self.assertEqual(self.e.get_item(self.name, ids[2]).label, "a")
        with self.assertRaises(EngramError) as gone:
            self.e.get_item(self.name, ids[0])
        self.assertEqual((gone.exception.status, gone.exception.code), (404, "not_found"))

    def test_curation_steers_decisions(self):
        ids, labels, vectors = clusters(5, ["a", "b"])
        self.e.add(self.name, ids=ids, labels=labels, vectors=vectors)
        query = vectors[0]
        self.assertEqual(self.e.classify(self.name, vector=query, k=3).label, "a")
        self.e.intervene(self.name, "block_class", "audit: a is suspect", label="a")
        self.assertEqual(self.e.classify(self.name, vector=query, k=3).label, "b")
        self.e.intervene(self.name, "unblock_class", "audit done", label="a")
        for i in ids[:5]:
            self.e.intervene(self.name, "relabel", "was mislabelled", id=i, label="c")
        self.assertEqual(self.e.classify(self.name, vector=query, k=3).label, "c")
        self.assertTrue(self.e.interventions(self.name))

    def test_jobs_ingest_parquet_and_prune(self):
        job = self.e.ingest(self.name, os.environ["ENGRAM_TEST_PARQUET"], timeout=120)
        self.assertEqual(job.state, "succeeded")
        self.assertEqual(self.e.get_collection(self.name).items, 100)
        self.assertIn(job.id, [j.id for j in self.e.jobs(self.name)])
        pruned = self.e.prune(self.name, mode="dry_run", k=5, timeout=120)
        self.assertEqual(pruned.state, "succeeded")
        self.assertEqual(pruned.report["items_scored"], 100)
        with self.assertRaises(JobFailed) as failed:
            self.e.ingest(self.name, os.path.dirname(os.environ["ENGRAM_TEST_PARQUET"]) + "/none-*.parquet", timeout=120)
        self.assertEqual(failed.exception.job.state, "failed")


class ErrorsTest(unittest.TestCase):
    def test_errors_carry_the_servers_code(self):
        e = Engram(URL, api_key=FULL)
        with self.assertRaises(EngramError) as missing:
            e.get_collection(fresh("absent"))
        self.assertEqual((missing.exception.status, missing.exception.code), (404, "not_found"))
        with self.assertRaises(EngramError) as bad:
            e.create_collection(fresh("bad"), dim=0, metric="l2")
        self.assertEqual((bad.exception.status, bad.exception.code), (400, "invalid_argument"))
        with self.assertRaises(ValueError):
            e.add("x", ids=[1], labels=["a"])
        unreachable = Engram("http://127.0.0.1:9", timeout=2)
        with self.assertRaises(EngramError) as down:
            unreachable.list_collections()
        self.assertEqual((down.exception.status, down.exception.code), (None, "unreachable"))
        self.assertFalse(unreachable.healthy())

    def test_keys(self):
        name = fresh("keys")
        full = Engram(URL, api_key=FULL)
        full.create_collection(name, dim=2, metric="l2")
        try:
            read = Engram(URL, api_key=READ)
            full.add(name, ids=[1], labels=["a"], vectors=[[0.0, 1.0]])
            self.assertEqual(read.search(name, vector=[0.0, 1.0], k=1)[0].id, 1)
            with self.assertRaises(EngramError) as denied:
                read.add(name, ids=[2], labels=["b"], vectors=[[1.0, 0.0]])
            self.assertEqual((denied.exception.status, denied.exception.code), (403, "permission_denied"))
            with self.assertRaises(EngramError) as anonymous:
                Engram(URL).list_collections()
            self.assertEqual(anonymous.exception.code, "unauthenticated")
            self.assertTrue(Engram(URL).healthy(), "probes need no key")
        finally:
            full.delete_collection(name)


class ImagesTest(unittest.TestCase):
    def test_images_as_bytes_paths_and_pil(self):
        from PIL import Image

        e = Engram(URL, api_key=FULL)
        name = fresh("images")
        e.create_collection(name, embedder="default")
        try:
            def picture(value: int) -> "Image.Image":
                image = Image.new("L", (28, 28), 0)
                for x in range(28):
                    for y in range(28):
                        if (x // 7 + y // 7) % 2 == value:
                            image.putpixel((x, y), 255)
                return image

            dark, light = picture(0), picture(1)
            buffer = io.BytesIO()
            light.save(buffer, format="PNG")
            path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"{name}.png")
            dark.save(path)
            added = e.add(name, ids=[1, 2, 3], labels=["dark", "light", "dark"], images=[path, buffer.getvalue(), dark])
            self.assertEqual(added, 3)
            self.assertEqual(e.classify(name, image=dark, k=1).label, "dark")
            self.assertEqual(e.search(name, image=buffer.getvalue(), k=1)[0].id, 2)
            vectors = e.embed(name, [dark, light])
            self.assertEqual(vectors.shape, (2, e.get_collection(name).dim))
            os.remove(path)
        finally:
            e.delete_collection(name)


class NotebookTest(unittest.TestCase):
    def test_the_demo_memory_through_the_client(self):
        """examples/fashion_mnist.py, as a notebook would run it, on a small memory."""
        script = os.path.join(HERE, "..", "examples", "fashion_mnist.py")
        out = subprocess.run(
            [sys.executable, script, "--url", URL, "--train", "1000", "--test", "200"],
            capture_output=True,
            text=True,
            env={**os.environ, "ENGRAM_API_KEY": FULL},
            timeout=900,
        )
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        print(out.stdout, file=sys.stderr)
        line = [l for l in out.stdout.splitlines() if l.startswith("accuracy ")][-1]
        accuracy = float(line.rsplit(" ", 1)[1])
        # A memory of 1,000 images classified 200 at 0.835 (2026-12-04); chance is 0.1.
        self.assertGreater(accuracy, 0.6, out.stdout)


if __name__ == "__main__":
    unittest.main()
