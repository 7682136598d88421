"""engram-client: the Python client of Engram, a visual memory.

    from engram_client import Engram
    e = Engram("http://127.0.0.1:7700", api_key=None)
    e.create_collection("points", dim=4, metric="l2")
    e.add("points", ids=[1, 2], labels=["a", "b"], vectors=[[0, 0, 0, 0], [1, 1, 1, 1]])
    e.classify("points", vector=[0.1, 0, 0, 0], k=1).label   # "a"
"""

from .client import MAX_ITEMS_PER_REQUEST, Engram, encode_image
from .errors import EngramError, JobFailed
from .models import Collection, Decision, Hit, Hits, Item, Job, Neighbor, Receipt

__version__ = "0.1.0"

__all__ = [
    "Engram",
    "EngramError",
    "JobFailed",
    "Collection",
    "Decision",
    "Hit",
    "Hits",
    "Item",
    "Job",
    "Neighbor",
    "Receipt",
    "encode_image",
    "MAX_ITEMS_PER_REQUEST",
]
