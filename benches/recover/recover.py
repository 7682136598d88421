"""One phase of `make bench-recover` (scripts/bench_recover.sh).

--kind delta|rows: a replica of a one-shard collection is killed with
kill -9, WRITES single-row writes go on without it, and it is started again:
this measures what its primary sent to bring it back in sync (bytes and
seconds, from the primary's `engram_catch_up_*{kind}` metrics) and the wall
time from its restart to the shard map showing it in sync, beside the bytes
those writes added to the primary's WAL. Prints one line:

  recover kind= rows= bytes= seconds= wal_bytes= wall_s= shard_rows=

--kind object_store: as delta, with no writes, but the replica's data directory
is deleted after the kill: the restarted worker's copy is rebuilt by a full
transfer whose segment files it downloads from the object storage its primary
uploaded them to (waited for first). bytes count what the primary sent plus
what the copy downloaded.

--kind segments: the replica's copy is moved to the worker that holds none
(POST /v1/cluster/moves, which returns once the new copy is in sync and the
old one dropped); its primary ships the sealed segment files. Prints

  recover kind=segments rows=0 bytes= seconds= wall_s= shard_rows= from= to=
"""

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.request


def call(url, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=600) as response:
        return response.read()


def shard(url, collection):
    status = json.loads(call(f"{url}/v1/cluster"))
    for c in status["collections"]:
        if c["name"] == collection:
            return c["shards"][0]
    raise SystemExit(f"no collection {collection} in {status}")


def metrics(worker, secret):
    text = call(
        f"http://127.0.0.1:{7809 + worker}/metrics",
        headers={"Authorization": f"Bearer {secret}"},
    ).decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("engram_catch_up"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values


def wal_bytes(cluster_dir, worker, collection):
    pattern = f"{cluster_dir}/worker-{worker}/collections/{collection}/shards/0000/wal-*.log"
    return sum(os.path.getsize(p) for p in glob.glob(pattern))


def catch_ups(values):
    """Catch-ups of every kind a primary counted."""
    return sum(v for k, v in values.items() if k.startswith("engram_catch_ups_total"))


def one_catch_up(before, after, kind):
    """The bytes and seconds of the one catch-up of `kind` a primary counted
    between two scrapes of its metrics; exits if it counted another."""

    def grew(series):
        return after.get(series, 0.0) - before.get(series, 0.0)

    kinds = [
        k
        for k in ("delta", "segments", "object_store", "rows")
        if grew(f'engram_catch_ups_total{{kind="{k}"}}') > 0
    ]
    if kinds != [kind]:
        raise SystemExit(f"expected one catch-up of kind {kind}, the primary counted {kinds}")
    label = '{kind="%s"}' % kind
    return grew("engram_catch_up_bytes_total" + label), grew(
        "engram_catch_up_duration_seconds_sum" + label
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:7700")
    parser.add_argument("--cluster-dir", required=True)
    parser.add_argument("--collection", required=True)
    parser.add_argument(
        "--kind", required=True, choices=["delta", "rows", "segments", "object_store"]
    )
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--first-id", type=int, required=True)
    parser.add_argument("--restart", required=True, help="command that starts the killed worker")
    args = parser.parse_args()
    secret = open(f"{args.cluster_dir}/cluster-secret").read().strip()

    placement = shard(args.url, args.collection)
    primary, replica = placement["primary"], placement["replicas"][0]
    if args.kind == "segments":
        return move(args, secret, primary, replica)
    if args.kind == "object_store":
        uploaded = f"{args.cluster_dir}/segment-store/shards/{args.collection}/0000/*/manifest.json"
        deadline = time.monotonic() + 1800
        while not glob.glob(uploaded):
            if time.monotonic() > deadline:
                raise SystemExit("the primary uploaded no segment within 30 minutes")
            time.sleep(1)
    pid = int(open(f"{args.cluster_dir}/worker-{replica}.pid").read())
    os.kill(pid, signal.SIGKILL)
    # Gone, not only killed: `cluster.sh start` takes a process it can still
    # signal (an unreaped one) for a running worker and would not restart it.
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    if args.kind == "object_store":
        shutil.rmtree(f"{args.cluster_dir}/worker-{replica}")
    wal_before = wal_bytes(args.cluster_dir, primary, args.collection)
    rng = random.Random(args.first_id)
    for i in range(args.writes):
        vector = [rng.uniform(-1, 1) for _ in range(args.dim)]
        item = {"id": args.first_id + i, "label": "missed", "vector": vector}
        call(f"{args.url}/v1/collections/{args.collection}/items", {"items": [item]})
    wal_after = wal_bytes(args.cluster_dir, primary, args.collection)
    if wal_after < wal_before:
        raise SystemExit("the primary's WAL rotated during the writes: the delta is not measurable")
    stats = json.loads(call(f"{args.url}/v1/collections/{args.collection}"))
    before = metrics(primary, secret)

    started = time.monotonic()
    subprocess.run(args.restart, shell=True, check=True, stdout=subprocess.DEVNULL)
    counted = before_count = catch_ups(before)
    while True:
        # Back in sync after its catch-up: a worker back on an empty disk
        # before it was missed is still counted in sync until it reports
        # its copy lost.
        placement = shard(args.url, args.collection)
        if counted > before_count and not placement["out_of_sync"] and replica in placement["replicas"]:
            break
        counted = catch_ups(metrics(primary, secret))
        if time.monotonic() - started > 7200:
            raise SystemExit("the replica did not catch up within 2 h")
        time.sleep(0.2)
    wall = time.monotonic() - started
    after = metrics(primary, secret)

    sent, seconds = one_catch_up(before, after, args.kind)
    print(
        f"recover kind={args.kind} rows={args.writes} bytes={sent:.0f} seconds={seconds:.2f} "
        f"wal_bytes={wal_after - wal_before} wall_s={wall:.1f} shard_rows={stats['items']}",
        flush=True,
    )


def move(args, secret, primary, replica):
    """Moves the replica's copy to the worker without one (see the module doc)."""
    status = json.loads(call(f"{args.url}/v1/cluster"))
    workers = sorted(w["id"] for w in status["workers"])
    free = [w for w in workers if w not in (primary, replica)][0]
    stats = json.loads(call(f"{args.url}/v1/collections/{args.collection}"))
    before = metrics(primary, secret)
    started = time.monotonic()
    body = {"collection": args.collection, "shard": 0, "from": replica, "to": free}
    request = urllib.request.Request(
        f"{args.url}/v1/cluster/moves",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=7200) as response:
        response.read()
    wall = time.monotonic() - started
    after = metrics(primary, secret)

    sent, seconds = one_catch_up(before, after, "segments")
    print(
        f"recover kind=segments rows=0 bytes={sent:.0f} seconds={seconds:.2f} wall_s={wall:.1f} "
        f"shard_rows={stats['items']} from={replica} to={free}",
        flush=True,
    )


if __name__ == "__main__":
    main()
