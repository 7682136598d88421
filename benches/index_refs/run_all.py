"""Run the reference ANN benchmarks: build and serve phases, each in its own process.

usage (from the repo root, after scripts/bench_index_setup.sh):
  python3 benches/index_refs/run_all.py --data D --work W [--systems faiss_hnsw scann ...]
      [--timeout 3600] [--disk-serve-timeout 600] [--skip-build]

Prints every result line (JSON, one per sweep point) on stdout; a system whose
phase fails or times out prints {"index", "data", "error"} and the run goes on.
Each phase's stderr goes to W/logs/<system>.<phase>.log.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MAIN_PY = os.path.join(ROOT, ".bench-venv", "bin", "python")
DISKANN_PY = os.path.join(ROOT, ".bench-venv-diskann", "bin", "python")

# system -> (index name, python, script, extra args)
SYSTEMS = {
    "faiss_hnsw": ("faiss-hnsw", MAIN_PY, "faiss_hnsw.py", []),
    "faiss_ivfpq": ("faiss-ivfpq", MAIN_PY, "faiss_ivfpq.py", []),
    "hnswlib": ("hnswlib", MAIN_PY, "hnswlib_ref.py", []),
    "scann": ("scann", MAIN_PY, "scann_ref.py", []),
    "diskannpy_mem": ("diskannpy-mem", DISKANN_PY, "diskannpy_ref.py", ["--variant", "mem"]),
    "diskannpy_disk": ("diskannpy-disk", DISKANN_PY, "diskannpy_ref.py", ["--variant", "disk"]),
}

# single-thread environment for the serve phase (the scripts also set it through each API)
SERVE_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run_phase(cmd, timeout, log_path, env):
    """-> (rc or None on timeout, stdout text, seconds)"""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                             env=env, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout)
            return p.returncode, out, time.monotonic() - t0
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                out = ""
            return None, out or "", time.monotonic() - t0


def log_tail(path, n=3):
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return " | ".join(lines[-n:])
    except OSError:
        return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per phase (default 3600)")
    ap.add_argument("--disk-serve-timeout", type=float, default=600,
                    help="seconds for the diskannpy disk-index serve phase (default 600)")
    ap.add_argument("--skip-build", action="store_true", help="reuse indexes already built under --work")
    a = ap.parse_args()

    with open(os.path.join(a.data, "meta.json")) as f:
        data_name = json.load(f)["name"]
    os.makedirs(os.path.join(a.work, "logs"), exist_ok=True)
    t_all = time.monotonic()

    for sysname in a.systems:
        index, py, script, extra = SYSTEMS[sysname]

        def error(msg):
            print(json.dumps({"index": index, "data": data_name, "error": msg}), flush=True)

        if not os.path.exists(py):
            error(f"{py} missing: run scripts/bench_index_setup.sh")
            continue
        base_cmd = [py, os.path.join(HERE, script), "--data", a.data, "--work", a.work] + extra
        phases = ["serve"] if a.skip_build else ["build", "serve"]
        for phase in phases:
            env = dict(os.environ)
            timeout = a.timeout
            if phase == "serve":
                env.update(SERVE_ENV)
                if sysname == "diskannpy_disk":
                    timeout = min(a.timeout, a.disk_serve_timeout)
            log_path = os.path.join(a.work, "logs", f"{sysname}.{phase}.log")
            print(f"[run_all] {sysname} {phase} (timeout {timeout:.0f}s) ...", file=sys.stderr, flush=True)
            rc, out, secs = run_phase(base_cmd + ["--phase", phase], timeout, log_path, env)
            for line in out.splitlines():
                if line.startswith("{"):
                    print(line, flush=True)
            print(f"[run_all] {sysname} {phase}: rc={rc} {secs:.1f}s", file=sys.stderr, flush=True)
            if rc is None:
                if sysname == "diskannpy_disk" and phase == "serve":
                    error("disk search hung (timeout)")
                else:
                    error(f"{phase} timed out after {timeout:.0f}s")
                break
            if rc != 0:
                error(f"{phase} failed (rc={rc}): {log_tail(log_path)}"[:1000])
                break

    print(f"[run_all] total {time.monotonic() - t_all:.1f}s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
