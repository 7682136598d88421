"""Helper of scripts/test_engines.sh (`make test-engines`), run with .venv-engines.

    test_engines_check.py input ENDPOINT BUCKET PREFIX
        writes FILES image Parquet files of Fashion-MNIST PNGs (row groups of
        ROW_GROUP rows; one row is not an image) under s3://BUCKET/PREFIX/
    test_engines_check.py compare ENDPOINT BUCKET REFERENCE PARTS N NAME SECONDS
        reads the reference's part 0/1 and the N parts under PARTS, prints
        `engines NAME parts=N rows=.. equal=true|false seconds=.. max_abs_diff=..`
        (the largest difference between an embedding and the reference's) and exits 1
        unless the parts, concatenated in part order, hold the reference's rows
        (id, label, embedding within 1e-5) in the same order, every part has
        its manifest, the manifests name each of the reference's row groups
        once and their counts add up to the reference's.

The object store is the loopback moto_server the shell script started
(credentials `test`/`test`).
"""

import gzip
import io
import json
import struct
import sys

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

DATASET = "/usr/share/datasets/fashion-mnist"
FILES = 2
PER_FILE = 160
ROW_GROUP = 40
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TOLERANCE = 1e-5


def store(endpoint: str) -> pafs.S3FileSystem:
    host = endpoint.split("://", 1)[1]
    return pafs.S3FileSystem(access_key="test", secret_key="test", region="us-east-1",
                             endpoint_override=host, scheme="http")


def idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(f">{dims}I", data[4:4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def make_input(endpoint: str, bucket: str, prefix: str) -> None:
    images = idx(f"{DATASET}/t10k-images-idx3-ubyte.gz")
    labels = idx(f"{DATASET}/t10k-labels-idx1-ubyte.gz")
    fs = store(endpoint)
    for f in range(FILES):
        rows = range(f * PER_FILE, (f + 1) * PER_FILE)
        pngs = []
        for i in rows:
            if f == 1 and i == PER_FILE + 7:
                pngs.append(b"not an image")  # a reject, in every run alike
                continue
            out = io.BytesIO()
            Image.fromarray(images[i], mode="L").save(out, format="PNG")
            pngs.append(out.getvalue())
        table = pa.table({
            "id": pa.array([1000 + i for i in rows], pa.uint64()),
            "label": pa.array([CLASSES[labels[i]] for i in rows], pa.string()),
            "image": pa.array(pngs, pa.binary()),
        })
        with fs.open_output_stream(f"{bucket}/{prefix}/part-{f}.parquet") as out:
            pq.write_table(table, out, row_group_size=ROW_GROUP)
    print(f"input: {FILES} files, {FILES * PER_FILE} rows, "
          f"{FILES * PER_FILE // ROW_GROUP} row groups under s3://{bucket}/{prefix}/")


def part_rows(fs: pafs.S3FileSystem, base: str, part: int, parts: int):
    name = f"{base}/part-{part:05d}-of-{parts:05d}"
    table = pq.read_table(fs.open_input_file(f"{name}.parquet"),
                          columns=["id", "label", "embedding"])
    with fs.open_input_stream(f"{name}.manifest.json") as f:
        manifest = json.loads(f.read())
    return table, manifest


def compare(endpoint, bucket, reference, parts_prefix, parts, name, seconds) -> int:
    fs = store(endpoint)
    parts = int(parts)
    ref, ref_manifest = part_rows(fs, f"{bucket}/{reference}", 0, 1)
    tables, manifests, problems = [], [], []
    for p in range(parts):
        try:
            table, manifest = part_rows(fs, f"{bucket}/{parts_prefix}", p, parts)
        except FileNotFoundError as e:
            problems.append(f"part {p}/{parts}: {e}")
            continue
        tables.append(table)
        manifests.append(manifest)
    got = pa.concat_tables(tables) if tables else ref.slice(0, 0)
    diff = None
    if problems:
        pass
    elif got.num_rows != ref.num_rows:
        problems.append(f"{got.num_rows} rows in the parts, {ref.num_rows} in the reference")
    else:
        if got["id"].to_pylist() != ref["id"].to_pylist():
            problems.append("ids differ (or their order)")
        if got["label"].to_pylist() != ref["label"].to_pylist():
            problems.append("labels differ")
        a = np.asarray(got["embedding"].combine_chunks().flatten(), dtype=np.float32)
        b = np.asarray(ref["embedding"].combine_chunks().flatten(), dtype=np.float32)
        if a.shape != b.shape:
            problems.append(f"embedding shapes {a.shape} and {b.shape}")
        else:
            diff = float(np.max(np.abs(a - b))) if a.size else 0.0
            if not diff <= TOLERANCE:
                problems.append(f"embeddings differ by up to {diff}")
    units = lambda ms: sorted((u["file"], u["group"]) for m in ms for u in m.get("units", []))
    if units(manifests) != units([ref_manifest]):
        problems.append("the parts' manifests do not list the reference's row groups once each")
    for key in ("rows_read", "rows_written", "rejected"):
        total = sum(int(m.get(key, 0)) for m in manifests)
        if key in ref_manifest and total != int(ref_manifest[key]):
            problems.append(f"{key}: parts {total}, reference {ref_manifest[key]}")
    if len({m.get("model_sha256") for m in manifests + [ref_manifest]}) != 1:
        problems.append("model sha256 differs between manifests")
    equal = not problems
    shown = "-" if diff is None else f"{diff:.1e}" if diff else "0"
    print(f"engines {name} parts={parts} rows={got.num_rows} equal={str(equal).lower()} "
          f"seconds={float(seconds):.1f} max_abs_diff={shown}")
    for problem in problems:
        print(f"  {name}: {problem}", file=sys.stderr)
    return 0 if equal else 1


def main() -> int:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "input":
        make_input(*args)
        return 0
    if command == "compare":
        return compare(*args)
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    sys.exit(main())
