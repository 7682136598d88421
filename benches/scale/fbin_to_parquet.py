"""Writes an engram-bench data directory's base.fbin as Parquet files an
`engram ingest --bulk` job reads (id uint64, label string, embedding
FixedSizeList<float32>), FILE_ROWS rows per file in row groups of 10,000,
streaming from a memory map so that 10M rows never sit in RAM at once.
Labels are `c<id % 100>` (the scale run measures search, not votes).

usage: fbin_to_parquet.py DATA_DIR OUT_DIR
"""
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FILE_ROWS = 1_000_000
GROUP_ROWS = 10_000


def main(data, out):
    header = np.fromfile(os.path.join(data, "base.fbin"), dtype=np.uint32, count=2)
    n, dim = int(header[0]), int(header[1])
    rows = np.memmap(os.path.join(data, "base.fbin"), dtype=np.float32, mode="r", offset=8, shape=(n, dim))
    os.makedirs(out, exist_ok=True)
    labels = np.array([f"c{i}" for i in range(100)], dtype=object)
    for f, start in enumerate(range(0, n, FILE_ROWS)):
        end = min(start + FILE_ROWS, n)
        ids = np.arange(start, end, dtype=np.uint64)
        table = pa.table({
            "id": pa.array(ids),
            "label": pa.array(labels[ids % 100]),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(rows[start:end]).reshape(-1)), dim),
        })
        tmp = os.path.join(out, f".part-{f:04d}.parquet")
        pq.write_table(table, tmp, row_group_size=GROUP_ROWS, compression="snappy")
        os.rename(tmp, os.path.join(out, f"part-{f:04d}.parquet"))
    print(f"wrote {n} rows of dim {dim} under {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
