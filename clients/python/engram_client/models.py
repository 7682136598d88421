"""What the server answers, as typed objects (the raw JSON stays in ``.raw``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass(frozen=True)
class Collection:
    name: str
    dim: int
    metric: str
    embedder: Optional[str]
    shards: int
    items: int
    labels: Dict[str, int]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Collection":
        return cls(
            name=body["name"],
            dim=body["dim"],
            metric=body["metric"],
            embedder=body.get("embedder"),
            shards=body.get("shards", 1),
            items=body.get("items", 0),
            labels=dict(body.get("labels", {})),
            raw=body,
        )


@dataclass(frozen=True)
class Hit:
    """One neighbour of a query, nearest first."""

    id: int
    label: str
    distance: float
    weight: float = 1.0
    source: Optional[str] = None

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Hit":
        return cls(
            id=body["id"],
            label=body["label"],
            distance=body["distance"],
            weight=body.get("weight", 1.0),
            source=body.get("source"),
        )


class Hits(List[Hit]):
    """The neighbours of a search, nearest first. ``partial`` is true when
    some shard did not answer in time (``missing_shards`` names them)."""

    def __init__(self, hits: List[Hit], partial: bool = False, missing_shards: Optional[List[int]] = None):
        super().__init__(hits)
        self.partial = partial
        self.missing_shards = list(missing_shards or [])


@dataclass(frozen=True)
class Neighbor:
    """A neighbour that voted: its vote under the rule, and its rank."""

    id: int
    label: str
    distance: float
    vote: float
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Neighbor":
        return cls(
            id=body["id"],
            label=body["label"],
            distance=body["distance"],
            vote=body.get("vote", 0.0),
            raw=body,
        )


@dataclass(frozen=True)
class Decision:
    """A classification: the winning label (``None`` when nobody voted), its
    share of the vote, every label's total, and the neighbours that voted."""

    label: Optional[str]
    confidence: float
    votes: Dict[str, float]
    neighbors: List[Neighbor]
    partial: bool
    raw: Dict[str, Any] = field(repr=False, compare=False)
    #: When a re-ranker took part: ``status`` (ok, fallback, skipped),
    #: ``scores``, ``fused``, ``vote_label`` ... (docs/api.md, Re-rankers).
    rerank: Optional[Dict[str, Any]] = None

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Decision":
        return cls(
            label=body.get("label"),
            confidence=body.get("confidence", 0.0),
            votes=dict(body.get("votes", {})),
            neighbors=[Neighbor.from_json(n) for n in body.get("neighbors", [])],
            partial=body.get("partial", False),
            raw=body,
            rerank=body.get("rerank"),
        )


@dataclass(frozen=True)
class Receipt:
    """What a delete removed, and the unlearning receipt that follows its bytes
    (``receipt`` is ``None`` when nothing matched)."""

    deleted: int
    receipt: Optional[int]


@dataclass(frozen=True)
class Item:
    id: int
    label: str
    weight: float
    source: Optional[str]
    vector: Optional[List[float]]

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Item":
        return cls(
            id=body["id"],
            label=body["label"],
            weight=body.get("weight", 1.0),
            source=body.get("source"),
            vector=body.get("vector"),
        )


@dataclass(frozen=True)
class Job:
    """A long-running job (ingest, prune): ``state`` is ``running``,
    ``succeeded``, ``failed`` or ``cancelled``; ``done``/``total`` its progress."""

    id: int
    kind: str
    state: str
    done: int
    total: int
    error: Optional[str]
    report: Optional[Dict[str, Any]]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @classmethod
    def from_json(cls, body: Dict[str, Any]) -> "Job":
        return cls(
            id=body["id"],
            kind=body["kind"],
            state=body["state"],
            done=body.get("done", 0),
            total=body.get("total", 0),
            error=body.get("error"),
            report=body.get("report"),
            raw=body,
        )
