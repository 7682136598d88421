"""Run `engram embed` on a Ray cluster: one task per part, retried by Ray.

Each node needs the `engram` binary on PATH, the ONNX Runtime library
(ORT_DYLIB_PATH) and the model (see deploy/docker/Dockerfile); S3 credentials
come from AWS_* variables. engram runs in ENGRAM_DIR (as the driver sees it;
default /opt/engram, the image's WORKDIR, against which the configs' relative
model paths resolve; the task's own directory where that does not exist).
CONFIG defaults to the image's /etc/engram/embedded.toml, which leaves storage
to the AWS_* variables. Each task asks Ray for ENGRAM_TASK_CPUS CPUs (default
4) and gives engram as many threads. A failed part (engram exits non-zero) is
retried up to 4 times. With GPUs, ask Ray for one per task and pass
`--provider cuda` (the library must be onnxruntime-gpu; otherwise the part
logs a warning and uses the CPU).

    python examples/ray/embed_parts.py s3://bucket/images/ s3://bucket/embeddings/ 256 [CONFIG]

`make test-engines` runs it on a local Ray against a loopback S3 server.
"""

import os
import subprocess
import sys

import ray

ENGRAM_DIR = os.environ.get("ENGRAM_DIR", "/opt/engram")
TASK_CPUS = int(os.environ.get("ENGRAM_TASK_CPUS", "4"))


# retry_exceptions: without it max_retries covers only a dead worker, not
# the RuntimeError of a part whose engram failed.
@ray.remote(max_retries=4, retry_exceptions=True)
def embed_part(source: str, output: str, part: int, parts: int, config: str, threads: int) -> str:
    done = subprocess.run(
        ["engram", "embed", source, output, "--part", f"{part}/{parts}", "--config", config,
         "--threads", str(threads)],
        capture_output=True,
        text=True,
        cwd=ENGRAM_DIR if os.path.isdir(ENGRAM_DIR) else None,
    )
    if done.returncode != 0:
        raise RuntimeError(f"part {part}/{parts} failed:\n{done.stderr}")
    return done.stdout.strip()


def main() -> None:
    source, output, parts = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = sys.argv[4] if len(sys.argv) > 4 else "/etc/engram/embedded.toml"
    ray.init()
    task = embed_part.options(num_cpus=TASK_CPUS)
    lines = ray.get([task.remote(source, output, p, parts, config, TASK_CPUS) for p in range(parts)])
    for part, line in enumerate(lines):
        print(part, line)


if __name__ == "__main__":
    main()
