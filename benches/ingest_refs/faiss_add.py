"""Reference for embedding ingestion: faiss HNSW (M=32, efConstruction 200)
adding the same vectors, one process, all cores as faiss chooses (run with
.bench-venv/bin/python). Prints one summary line."""
import resource
import sys
import time

import faiss
import numpy as np

vectors = np.load(sys.argv[1])
index = faiss.IndexHNSWFlat(vectors.shape[1], 32)
index.hnsw.efConstruction = 200
started = time.perf_counter()
index.add(vectors)
seconds = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"ingest-ref kind=embeddings impl=faiss-hnsw-add rows={len(vectors)} rows_per_s={len(vectors) / seconds:.0f} "
      f"peak_rss_mb={rss:.0f} threads={faiss.omp_get_max_threads()}")
