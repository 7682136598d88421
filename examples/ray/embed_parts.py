"""Run `engram embed` on a Ray cluster: one task per part, retried by Ray.

Each node needs the `engram` binary, the ONNX Runtime library (ORT_DYLIB_PATH)
and the model; S3 credentials come from AWS_* variables. With GPUs, ask Ray
for one per task and pass `--provider cuda` (the library must be
onnxruntime-gpu; otherwise the part logs a warning and uses the CPU).

    python examples/ray/embed_parts.py s3://bucket/images/ s3://bucket/embeddings/ 256
"""

import subprocess
import sys

import ray


@ray.remote(num_cpus=4, max_retries=4)
def embed_part(source: str, output: str, part: int, parts: int, config: str) -> str:
    done = subprocess.run(
        ["engram", "embed", source, output, "--part", f"{part}/{parts}", "--config", config],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"part {part}/{parts} failed:\n{done.stderr}")
    return done.stdout.strip()


def main() -> None:
    source, output, parts = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = sys.argv[4] if len(sys.argv) > 4 else "/etc/engram/coordinator.toml"
    ray.init()
    lines = ray.get([embed_part.remote(source, output, p, parts, config) for p in range(parts)])
    for part, line in enumerate(lines):
        print(part, line)


if __name__ == "__main__":
    main()
