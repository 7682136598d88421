#!/usr/bin/env python3
"""A small working re-ranker for Engram's `kind = "http"` contract.

Engram POSTs one JSON body per classify call (every query of a batch):

    {"reranker": "example", "collection": "fashion", "k": 10,
     "queries": [{"vector": [...], "image": "<base64, if asked for>",
                  "neighbors": [{"id": 1, "label": "Coat", "distance": 0.12,
                                 "weight": 1.0, "vote": 0.5, "source": "..."}],
                  "votes": {"Coat": 3.2, "Shirt": 1.1}}]}

and expects one result per query, in order:

    {"results": [{"scores": {"Coat": 0.8, "Shirt": 0.2}}]}

Scores must be finite and >= 0, not all 0; Engram normalises them and fuses
them with the vote shares (`mix` in its config). Any label may be scored.

This one re-weights the neighbours by a softmax over their distances with
its own temperature (a different opinion from the votes' rank rule, which
is the point of a second stage) and blends in a label prior it learns from
what it has seen. Standard library only:

    python3 examples/rerankers/softmax_reranker.py --port 7720 [--tau 0.05]

GET /healthz answers "ok"; POST /rerank is the contract. --fail-every N
answers HTTP 500 to every Nth call (to watch Engram fall back).
"""

import argparse
import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Reranker:
    def __init__(self, tau, prior_weight):
        self.tau = tau
        self.prior_weight = prior_weight
        self.seen = {}
        self.lock = threading.Lock()

    def score(self, query):
        scores = {}
        for n in query.get("neighbors", []):
            w = math.exp(-float(n["distance"]) / self.tau) * max(float(n.get("weight", 1.0)), 0.0)
            scores[n["label"]] = scores.get(n["label"], 0.0) + w
        total = sum(scores.values())
        if total <= 0.0:
            # No usable neighbour: fall back on the votes as given.
            scores = {label: v for label, v in query.get("votes", {}).items() if v > 0}
            total = sum(scores.values())
        if total <= 0.0:
            return {"unknown": 1.0}
        with self.lock:
            seen_total = sum(self.seen.values()) or 1.0
            prior = {label: self.seen.get(label, 0.0) / seen_total for label in scores}
            best = max(scores, key=scores.get)
            self.seen[best] = self.seen.get(best, 0.0) + 1.0
        return {
            label: (1 - self.prior_weight) * s / total + self.prior_weight * prior[label]
            for label, s in scores.items()
        }


def make_handler(reranker, fail_every):
    calls = {"n": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            # Headers and body go out in two writes: without this, Nagle's
            # algorithm and the client's delayed ACK add ~40 ms per answer.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/healthz":
                self.reply(200, "ok")
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            if self.path != "/rerank":
                return self.reply(404, {"error": "not found"})
            length = int(self.headers.get("content-length", "0"))
            try:
                request = json.loads(self.rfile.read(length))
                queries = request["queries"]
            except (ValueError, KeyError) as e:
                return self.reply(400, {"error": f"bad request: {e}"})
            with lock:
                calls["n"] += 1
                fail = fail_every and calls["n"] % fail_every == 0
            if fail:
                return self.reply(500, {"error": "failing on purpose (--fail-every)"})
            self.reply(200, {"results": [{"scores": reranker.score(q)} for q in queries]})

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7720)
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--prior-weight", type=float, default=0.0)
    parser.add_argument("--fail-every", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(
        (args.host, args.port),
        make_handler(Reranker(args.tau, args.prior_weight), args.fail_every),
    )
    print(f"re-ranker listening on http://{args.host}:{server.server_address[1]}/rerank", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
