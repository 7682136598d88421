"""Run `engram embed` over a Spark cluster: one task per part.

Every executor needs the `engram` binary, the ONNX Runtime library
(ORT_DYLIB_PATH) and the model (see deploy/docker/Dockerfile); S3 credentials
come from the usual AWS_* variables. Parts are idempotent, so Spark's task
retries and speculative execution are safe: a finished part is skipped, a
half-written one is replaced whole.

    spark-submit examples/spark/embed_parts.py s3://bucket/images/ s3://bucket/embeddings/ 256
"""

import subprocess
import sys

from pyspark.sql import SparkSession


def main() -> None:
    source, output, parts = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = sys.argv[4] if len(sys.argv) > 4 else "/etc/engram/coordinator.toml"
    spark = SparkSession.builder.appName("engram-embed").getOrCreate()

    def run(part: int):
        done = subprocess.run(
            ["engram", "embed", source, output, "--part", f"{part}/{parts}", "--config", config],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"part {part}/{parts} failed:\n{done.stderr}")
        yield (part, done.stdout.strip())

    results = (
        spark.sparkContext.parallelize(range(parts), numSlices=parts)
        .flatMap(run)
        .collect()
    )
    for part, line in sorted(results):
        print(part, line)
    spark.stop()


if __name__ == "__main__":
    main()
