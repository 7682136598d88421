"""The demo's visual memory through the Python client, as a notebook would build it.

    python examples/fashion_mnist.py --url http://127.0.0.1:7700 --train 20000 --test 1000

Reads Fashion-MNIST (Debian package dataset-fashion-mnist), puts training images
into a collection embedded by the server's default model, classifies held-out
images by their neighbours' votes, unlearns one class and shows it gone.
"""

import argparse
import gzip
import os
import struct
import time

import numpy as np
from PIL import Image

from engram_client import Engram

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def idx(path: str) -> np.ndarray:
    """An IDX file (images or labels) as an array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:7700")
    parser.add_argument("--dataset-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--train", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=1_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--collection", default=None)
    args = parser.parse_args()

    # 1. Connect (the key comes from ENGRAM_API_KEY when the server has keys on).
    e = Engram(args.url, api_key=os.environ.get("ENGRAM_API_KEY"), ca_cert=os.environ.get("ENGRAM_CA_CERT"))

    # 2. Load the images.
    images = idx(os.path.join(args.dataset_dir, "train-images-idx3-ubyte.gz"))
    labels = idx(os.path.join(args.dataset_dir, "train-labels-idx1-ubyte.gz"))
    test_images = idx(os.path.join(args.dataset_dir, "t10k-images-idx3-ubyte.gz"))
    test_labels = idx(os.path.join(args.dataset_dir, "t10k-labels-idx1-ubyte.gz"))
    train = [Image.fromarray(a) for a in images[: args.train]]
    queries = [Image.fromarray(a) for a in test_images[: args.test]]

    # 3. A collection the server embeds with its default image model.
    name = args.collection or f"fashion-mnist-py-{os.getpid()}"
    e.create_collection(name, embedder="default")
    started = time.monotonic()
    e.add(name, ids=range(args.train), labels=[CLASSES[c] for c in labels[: args.train]], images=train, progress=True)
    print(f"memory: {args.train} images in {time.monotonic() - started:.1f} s")

    # 4. Classify held-out images by their neighbours' votes.
    decisions = e.classify_batch(name, images=queries, k=args.k, rule="rank", progress=True)
    truth = [CLASSES[c] for c in test_labels[: args.test]]
    correct = sum(d.label == t for d, t in zip(decisions, truth))
    first = decisions[0]
    print(f"first test image: {truth[0]!r} decided {first.label!r} with confidence {first.confidence:.2f},")
    print("  neighbours " + ", ".join(f"{n.id}:{n.label}" for n in first.neighbors[:5]))

    # 5. Unlearn a class: its items leave every decision at once.
    receipt = e.delete(name, label="Trouser")
    left = sum(n.label == "Trouser" for d in e.classify_batch(name, images=queries[:50], k=args.k) for n in d.neighbors)
    print(f"unlearned 'Trouser': {receipt.deleted} items deleted (receipt {receipt.receipt}); neighbours left: {left}")
    e.delete_collection(name)

    print(f"accuracy rule=rank k={args.k} n={args.test}: {correct / args.test:.4f}")


if __name__ == "__main__":
    main()
