"""Run `engram embed` over a Spark cluster: one task per part.

Every executor needs the `engram` binary on PATH, the ONNX Runtime library
(ORT_DYLIB_PATH) and the model (see deploy/docker/Dockerfile); S3 credentials
come from the usual AWS_* variables. engram runs in ENGRAM_DIR (as the driver
sees it; default /opt/engram, the image's WORKDIR, against which the configs'
relative model paths resolve; the task's own directory where that does not
exist). CONFIG defaults to the image's /etc/engram/embedded.toml, which leaves
storage to the AWS_* variables. Each part gets spark.task.cpus threads
(default 1: an executor runs as many parts at once as it has cores; `--conf
spark.task.cpus=4` gives each part 4). Parts are idempotent, so Spark's task
retries and speculative execution are safe: a finished part is skipped, a
half-written one is replaced whole.

    spark-submit examples/spark/embed_parts.py s3://bucket/images/ s3://bucket/embeddings/ 256 [CONFIG]

`make test-engines` runs it on a local Spark against a loopback S3 server.
"""

import os
import subprocess
import sys

from pyspark.sql import SparkSession


def main() -> None:
    source, output, parts = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = sys.argv[4] if len(sys.argv) > 4 else "/etc/engram/embedded.toml"
    workdir = os.environ.get("ENGRAM_DIR", "/opt/engram")
    spark = SparkSession.builder.appName("engram-embed").getOrCreate()
    threads = spark.sparkContext.getConf().get("spark.task.cpus", "1")

    def run(part: int):
        done = subprocess.run(
            ["engram", "embed", source, output, "--part", f"{part}/{parts}", "--config", config,
             "--threads", threads],
            capture_output=True,
            text=True,
            cwd=workdir if os.path.isdir(workdir) else None,
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
