"""The synchronous client of Engram's HTTP API (docs/api.md)."""

from __future__ import annotations

import base64
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import requests

from .errors import EngramError, JobFailed
from .models import Collection, Decision, Hit, Hits, Item, Job, Receipt

#: What an image may be: encoded PNG/JPEG bytes, a path to such a file, or a
#: ``PIL.Image.Image`` (encoded as PNG).
ImageLike = Union[bytes, str, "os.PathLike[str]", Any]

#: The server's cap on items per request (`limits.max_items_per_request`).
MAX_ITEMS_PER_REQUEST = 10_000


def encode_image(image: ImageLike) -> str:
    """Base64 of an image's encoded bytes, as the API takes it."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            data = f.read()
    elif hasattr(image, "save"):
        import io

        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(f"an image is bytes, a path or a PIL image, not {type(image).__name__}")
    return base64.b64encode(data).decode("ascii")


def _rows(vectors: Any) -> List[List[float]]:
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"vectors must be 1- or 2-dimensional, not {array.ndim}")
    return array.tolist()


class _Progress:
    """A progress bar on stderr: tqdm when installed, a plain line otherwise."""

    def __init__(self, total: int, what: str, enabled: bool):
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.what = what
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm  # type: ignore

                self.bar = tqdm(total=total, desc=what, unit="item")
            except ImportError:
                self.bar = None

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
        else:
            print(f"\r{self.what}: {self.done}/{self.total}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            print(file=sys.stderr)


class Engram:
    """A client of one Engram server (the embedded node or any coordinator).

    >>> e = Engram("http://127.0.0.1:7700", api_key=os.environ.get("ENGRAM_API_KEY"))
    >>> e.create_collection("shoes", embedder="default")
    >>> e.add("shoes", ids=[1, 2], labels=["boot", "sneaker"], images=["a.png", "b.png"])
    >>> e.classify("shoes", image="query.png", k=10).label

    ``api_key`` is a key of ``[security]`` or a scoped token (``engram token``);
    ``ca_cert`` a PEM file of the CA that signed an ``https://`` server's
    certificate. Every failed call raises :class:`EngramError` with the
    server's error code.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:7700",
        api_key: Optional[str] = None,
        *,
        ca_cert: Optional[str] = None,
        timeout: float = 120.0,
        session: Optional[requests.Session] = None,
    ):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        # Passed with every request: requests lets REQUESTS_CA_BUNDLE (set on
        # many machines) override a session's own `verify`, never a request's.
        self._verify: Optional[str] = ca_cert

    def __repr__(self) -> str:
        return f"Engram({self.url!r})"

    # -- plumbing -----------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None, params: Optional[Dict[str, Any]] = None) -> Any:
        try:
            extra: Dict[str, Any] = {"verify": self._verify} if self._verify else {}
            response = self.session.request(
                method, self.url + path, json=body, params=params, timeout=self.timeout, **extra
            )
        except requests.RequestException as error:
            raise EngramError(None, "unreachable", f"{method} {self.url}{path}: {error}") from error
        if response.status_code >= 400:
            try:
                detail = response.json()["error"]
                code, message = detail["code"], detail["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", response.text[:500]
            raise EngramError(response.status_code, code, message)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    @staticmethod
    def _path(collection: str, *rest: str) -> str:
        return "/".join(["/v1/collections", requests.utils.quote(collection, safe=""), *rest])

    # -- collections ----------------------------------------------------------

    def create_collection(
        self,
        name: str,
        dim: Optional[int] = None,
        metric: str = "cosine",
        embedder: Optional[str] = None,
        shards: Optional[int] = None,
        replication: Optional[int] = None,
        default_k: Optional[int] = None,
        default_rule: Optional[str] = None,
    ) -> Collection:
        """Creates a collection of ``dim``-dimensional vectors, or of images
        embedded by ``embedder`` (``"default"``: the server's image model)."""
        body: Dict[str, Any] = {"name": name, "metric": metric}
        for key, value in [
            ("dim", dim),
            ("embedder", embedder),
            ("shards", shards),
            ("replication", replication),
            ("default_k", default_k),
            ("default_rule", default_rule),
        ]:
            if value is not None:
                body[key] = value
        return Collection.from_json(self._call("POST", "/v1/collections", body))

    def list_collections(self) -> List[Collection]:
        return [Collection.from_json(c) for c in self._call("GET", "/v1/collections")["collections"]]

    def get_collection(self, name: str) -> Collection:
        return Collection.from_json(self._call("GET", self._path(name)))

    def delete_collection(self, name: str) -> None:
        self._call("DELETE", self._path(name))

    # -- items ------------------------------------------------------------------

    def add(
        self,
        collection: str,
        ids: Sequence[int],
        labels: Sequence[str],
        vectors: Any = None,
        images: Optional[Sequence[ImageLike]] = None,
        sources: Optional[Sequence[Optional[str]]] = None,
        weights: Optional[Sequence[float]] = None,
        batch_size: Optional[int] = None,
        progress: bool = False,
    ) -> int:
        """Adds (or replaces, by id) items given as ``vectors`` (an array of
        shape (n, dim)) or ``images``; returns how many were added. Sent in
        batches (256 images or 1,000 vectors by default); ``progress`` shows a
        bar."""
        if (vectors is None) == (images is None):
            raise ValueError("give exactly one of vectors= or images=")
        ids = [int(i) for i in ids]
        labels = [str(label) for label in labels]
        rows: Sequence[Any] = _rows(vectors) if vectors is not None else list(images or [])
        for name, values in [("labels", labels), ("vectors" if vectors is not None else "images", rows)]:
            if len(values) != len(ids):
                raise ValueError(f"{len(ids)} ids but {len(values)} {name}")
        for name, values in [("sources", sources), ("weights", weights)]:
            if values is not None and len(values) != len(ids):
                raise ValueError(f"{len(ids)} ids but {len(values)} {name}")
        size = min(batch_size or (256 if images is not None else 1_000), MAX_ITEMS_PER_REQUEST)
        bar = _Progress(len(ids), f"adding to {collection}", progress)
        added = 0
        try:
            for start in range(0, len(ids), size):
                items = []
                for i in range(start, min(start + size, len(ids))):
                    item: Dict[str, Any] = {"id": ids[i], "label": labels[i]}
                    if vectors is not None:
                        item["vector"] = rows[i]
                    else:
                        item["image"] = encode_image(rows[i])
                    if sources is not None and sources[i] is not None:
                        item["source"] = sources[i]
                    if weights is not None:
                        item["weight"] = float(weights[i])
                    items.append(item)
                answer = self._call("POST", self._path(collection, "items"), {"items": items})
                added += answer["added"]
                bar.advance(len(items))
        finally:
            bar.close()
        return added

    def get_item(self, collection: str, id: int, vector: bool = False) -> Item:
        params = {"vector": "true"} if vector else None
        return Item.from_json(self._call("GET", self._path(collection, "items", str(int(id))), params=params))

    def delete(
        self,
        collection: str,
        ids: Optional[Sequence[int]] = None,
        label: Optional[str] = None,
        source: Optional[str] = None,
    ) -> Receipt:
        """Deletes items by id, label and/or source (the union); the receipt
        follows their bytes until they are erased (:meth:`unlearning`)."""
        body: Dict[str, Any] = {}
        if ids is not None:
            body["ids"] = [int(i) for i in ids]
        if label is not None:
            body["label"] = label
        if source is not None:
            body["source"] = source
        if not body:
            raise ValueError("give ids=, label= or source=")
        answer = self._call("POST", self._path(collection, "items", "delete"), body)
        return Receipt(deleted=answer["deleted"], receipt=answer.get("receipt"))

    def unlearning(self, collection: str, receipt: int) -> Dict[str, Any]:
        """Where the bytes of a delete still are: ``status`` is ``deleted``
        until no file holds them, then ``erased``."""
        return self._call("GET", self._path(collection, "unlearning", str(int(receipt))))

    # -- queries ----------------------------------------------------------------

    @staticmethod
    def _query(vector: Any, image: Optional[ImageLike]) -> Dict[str, Any]:
        if (vector is None) == (image is None):
            raise ValueError("give exactly one of vector= or image=")
        if vector is not None:
            return {"vector": _rows(vector)[0]}
        return {"image": encode_image(image)}

    @staticmethod
    def _options(**options: Any) -> Dict[str, Any]:
        return {key: value for key, value in options.items() if value is not None}

    def search(
        self,
        collection: str,
        vector: Any = None,
        image: Optional[ImageLike] = None,
        k: Optional[int] = None,
        exclude_ids: Optional[Sequence[int]] = None,
        search_list_size: Optional[int] = None,
    ) -> Hits:
        """The ``k`` nearest items to a vector or an image, nearest first."""
        body = self._query(vector, image)
        body.update(self._options(k=k, exclude_ids=exclude_ids, search_list_size=search_list_size))
        answer = self._call("POST", self._path(collection, "search"), body)
        return Hits(
            [Hit.from_json(n) for n in answer["neighbors"]],
            partial=answer.get("partial", False),
            missing_shards=answer.get("missing_shards"),
        )

    def classify(
        self,
        collection: str,
        vector: Any = None,
        image: Optional[ImageLike] = None,
        k: Optional[int] = None,
        rule: Optional[str] = None,
        explain: Optional[bool] = None,
        exclude_ids: Optional[Sequence[int]] = None,
        rerank: Optional[Union[str, bool]] = None,
        **rule_params: float,
    ) -> Decision:
        """Lets the ``k`` nearest neighbours vote under ``rule`` (``rank``,
        ``softmax``, ``distance``, ``plurality``; ``alpha=``, ``tau=``,
        ``xi=`` tune them). ``rerank`` names a configured re-ranker (or
        ``False``: the votes alone; ``None``: the collection's default); its
        part is in :attr:`Decision.rerank`."""
        body = self._query(vector, image)
        body.update(
            self._options(k=k, rule=rule, explain=explain, exclude_ids=exclude_ids, rerank=rerank, **rule_params)
        )
        return Decision.from_json(self._call("POST", self._path(collection, "classify"), body))

    def classify_batch(
        self,
        collection: str,
        vectors: Any = None,
        images: Optional[Sequence[ImageLike]] = None,
        k: Optional[int] = None,
        rule: Optional[str] = None,
        batch_size: int = 256,
        progress: bool = False,
        rerank: Optional[Union[str, bool]] = None,
        **rule_params: float,
    ) -> List[Decision]:
        """:meth:`classify` for many queries, in batches of ``batch_size``."""
        if (vectors is None) == (images is None):
            raise ValueError("give exactly one of vectors= or images=")
        queries: List[Dict[str, Any]]
        if vectors is not None:
            queries = [{"vector": row} for row in _rows(vectors)]
        else:
            queries = [{"image": encode_image(image)} for image in images or []]
        options = self._options(k=k, rule=rule, rerank=rerank, **rule_params)
        decisions: List[Decision] = []
        bar = _Progress(len(queries), f"classifying in {collection}", progress)
        try:
            for start in range(0, len(queries), batch_size):
                body = {"queries": queries[start : start + batch_size], **options}
                answer = self._call("POST", self._path(collection, "classify", "batch"), body)
                decisions.extend(Decision.from_json(r) for r in answer["results"])
                bar.advance(len(body["queries"]))
        finally:
            bar.close()
        return decisions

    def embed(self, collection: str, images: Sequence[ImageLike]) -> np.ndarray:
        """The collection embedder's vectors of ``images``, shape (n, dim)."""
        body = {"images": [encode_image(image) for image in images]}
        answer = self._call("POST", self._path(collection, "embed"), body)
        return np.asarray(answer["vectors"], dtype=np.float32)

    # -- curation -----------------------------------------------------------------

    def intervene(self, collection: str, action: str, reason: str, **fields: Any) -> Dict[str, Any]:
        """One curation step, e.g. ``intervene("c", "relabel", "typo", id=7,
        label="boot")``, ``"set_weight"`` (``id``, ``weight``),
        ``"block_class"`` (``label``), ``"block_source"`` (``source``) and
        their ``clear_``/``unblock_`` inverses. ``reason`` is kept in the
        audit trail."""
        body = {"action": action, "reason": reason, **fields}
        return self._call("POST", self._path(collection, "interventions"), body)

    def interventions(self, collection: str) -> Dict[str, Any]:
        """The curation in force and its audit trail."""
        return self._call("GET", self._path(collection, "interventions"))

    # -- jobs -----------------------------------------------------------------------

    def ingest(
        self,
        collection: str,
        uri: str,
        columns: Optional[Dict[str, str]] = None,
        bulk: bool = False,
        wait: bool = True,
        progress: bool = False,
        timeout: Optional[float] = None,
        **options: Any,
    ) -> Job:
        """Ingests Parquet files from object storage (or a local path under
        the server's ``[storage] local_roots``) as a job; waits for it unless
        ``wait=False``."""
        body: Dict[str, Any] = {"kind": "ingest", "uri": uri, **options}
        if columns:
            body["columns"] = columns
        if bulk:
            body["bulk"] = True
        return self._start_job(collection, body, wait, progress, timeout)

    def prune(
        self,
        collection: str,
        mode: str = "dry_run",
        k: int = 10,
        threshold: int = 3,
        wait: bool = True,
        progress: bool = False,
        timeout: Optional[float] = None,
    ) -> Job:
        """The paper's memory pruning: ``dry_run`` reports, ``hard`` deletes
        items with v >= threshold, ``soft`` down-weights them."""
        body = {"kind": "prune", "mode": mode, "k": k, "threshold": threshold}
        return self._start_job(collection, body, wait, progress, timeout)

    def _start_job(
        self, collection: str, body: Dict[str, Any], wait: bool, progress: bool, timeout: Optional[float]
    ) -> Job:
        job = Job.from_json(self._call("POST", self._path(collection, "jobs"), body))
        return self.wait_job(collection, job.id, timeout=timeout, progress=progress) if wait else job

    def job(self, collection: str, job_id: int) -> Job:
        return Job.from_json(self._call("GET", self._path(collection, "jobs", str(int(job_id)))))

    def jobs(self, collection: str) -> List[Job]:
        answer = self._call("GET", self._path(collection, "jobs"))
        listed = answer["jobs"] if isinstance(answer, dict) else answer
        return [Job.from_json(j) for j in listed]

    def cancel_job(self, collection: str, job_id: int) -> Job:
        return Job.from_json(self._call("POST", self._path(collection, "jobs", str(int(job_id)), "cancel")))

    def wait_job(
        self,
        collection: str,
        job_id: int,
        timeout: Optional[float] = None,
        progress: bool = False,
        poll: float = 0.25,
    ) -> Job:
        """Polls a job until it ends; raises :class:`JobFailed` unless it
        succeeded, :class:`EngramError` (``code="timeout"``) past ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar: Optional[_Progress] = None
        try:
            while True:
                job = self.job(collection, job_id)
                if progress:
                    if bar is None and job.total:
                        bar = _Progress(job.total, f"{job.kind} job {job.id}", True)
                    if bar is not None:
                        bar.advance(max(0, job.done - bar.done))
                if job.finished:
                    if job.state != "succeeded":
                        raise JobFailed(job, f"{job.kind} job {job.id} {job.state}: {job.error or ''}")
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise EngramError(None, "timeout", f"job {job_id} still running after {timeout} s")
                time.sleep(poll)
        finally:
            if bar is not None:
                bar.close()

    # -- health -----------------------------------------------------------------------

    def healthy(self) -> bool:
        """Whether the server answers its liveness probe."""
        try:
            return self._call("GET", "/healthz") is not None
        except EngramError:
            return False


__all__ = ["Engram", "encode_image", "MAX_ITEMS_PER_REQUEST"]
