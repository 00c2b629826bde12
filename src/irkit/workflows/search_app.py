"""The search app's logic (``irkit app``): text and composed queries over an embedding collection.

* a **text query** ranks the collection's stored image embeddings [N, D] by cosine similarity with
  the query's text embedding (as ``irkit embed search``);
* a **composed query** (a reference image — a collection row or an uploaded file — plus a
  modification text) is answered by any registered CIR method (:mod:`irkit.cir.registry`): an
  embedding method's query embedding is ranked against the stored image embeddings (or the
  method's own gallery embeddings where it defines them), a ranking method ranks the collection
  itself. The reference image is never among its own results.

Scores are inner products of L2-normalised embeddings (cosine similarity, in [-1, 1]); a ranking
method gives no score. With ``exact=False`` a collection's ANN index (``irkit index build``) answers
the text queries and the embedding methods that rank the stored embeddings, as ``irkit embed
search`` does. The web layer (:mod:`irkit.web_app`) and ``irkit search`` only call
:class:`CollectionSearch`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from irkit.cir.context import CIRContext
from irkit.cir.registry import CIRMethod, EmbeddingMethod, create_method, method_options
from irkit.collection import (
    check_collection_model,
    collection_searcher,
    read_collection_info,
    read_embedding_collection,
)
from irkit.data.collection import load_collection_split
from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError
from irkit.index import search

#: Methods the app offers when none are named: the zero-shot baselines (no trained part needed).
DEFAULT_APP_METHODS = ("image-text-sum", "image-only", "text-only")
#: The id of an uploaded reference image inside a query split: ``upload-<sha256 prefix>``.
UPLOAD_PREFIX = "upload-"


@dataclass(frozen=True)
class SearchHit:
    """One result: 1-based ``rank``, collection ``row``, display ``name``, ``score`` (cosine
    similarity, None for a ranking method) and the image file."""

    rank: int
    row: int
    name: str
    score: Optional[float]
    image_path: Path

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "row": self.row, "name": self.name, "score": self.score,
                "image_path": str(self.image_path)}


class CollectionSearch:
    """Answers text and composed queries over one collection with one backbone and named methods.

    Queries are serialised by a lock (one model, one cache), so a threaded web server may call it.
    """

    def __init__(self, folder: os.PathLike | str, ctx: CIRContext, methods: Mapping[str, CIRMethod],
                 exact: bool = True) -> None:
        self.folder = Path(folder)
        self.ctx = ctx
        self.methods = dict(methods)
        self.embeddings, metadata = read_embedding_collection(self.folder)
        check_collection_model(ctx.loaded, self.folder, self.embeddings.shape[1])
        check_collection_transform(ctx.loaded, self.folder)
        self.split: CIRSplit = load_collection_split(self.folder, "app")
        if "image_name" in metadata.columns:
            self.names = [str(name) for name in metadata["image_name"].tolist()]
        else:
            self.names = [Path(str(path)).name for path in metadata["image_path"].tolist()]
        self.uploads: dict[str, Path] = {}
        self._lock = threading.Lock()
        #: the collection's ANN searcher (``<folder>/index``), None for exact search
        self.ann = None
        if not exact:
            searcher = collection_searcher(self.folder)
            self.ann = searcher if searcher.description != "exact" else None

    @property
    def search_description(self) -> str:
        """``"exact"`` or the ANN index that answers ranked-embedding queries (``ann:<key>,<param>``)."""
        return "exact" if self.ann is None else self.ann.description

    def _top_rows(self, query: np.ndarray, k: int, excluded: int = -1) -> tuple[list[float], list[int]]:
        """Top-``k`` (scores, rows) of one query [1, D] over the stored embeddings, without row ``excluded``."""
        if self.ann is None:
            scores, indices = search(query, self.embeddings, k, exclude=np.array([excluded], np.int64))
            return scores[0].tolist(), indices[0].tolist()
        scores, indices = self.ann.search(np.asarray(query, np.float32), k + 1)
        kept = [(float(s), int(i)) for s, i in zip(scores[0], indices[0]) if i >= 0 and i != excluded][:k]
        return [s for s, _ in kept], [i for _, i in kept]

    @property
    def size(self) -> int:
        """Number of images in the collection."""
        return len(self.names)

    def image_path(self, row: int) -> Path:
        """The image file of collection row ``row`` (:class:`InputError` when out of range)."""
        return self.split.image_path(self.gallery_id(row))

    def gallery_id(self, row: int) -> str:
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < self.size:
            raise InputError(f"row {row!r} is not in the collection; expected 0..{self.size - 1}", field="row")
        return self.split.gallery[row]

    def add_upload(self, image_file: os.PathLike | str) -> str:
        """Register an uploaded reference image file (checked to be a readable image); returns its id."""
        from PIL import Image, UnidentifiedImageError

        image_file = Path(image_file)
        try:
            with Image.open(image_file) as image:
                image.verify()
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"not a readable image ({e})", path=image_file) from None
        digest = hashlib.sha256(image_file.read_bytes()).hexdigest()[:16]
        upload_id = UPLOAD_PREFIX + digest
        self.uploads[upload_id] = image_file
        return upload_id

    def upload_path(self, upload_id: str) -> Path:
        if upload_id not in self.uploads:
            raise InputError(f"unknown upload {upload_id!r}; upload the image again", field="upload")
        return self.uploads[upload_id]

    def _hits(self, rows: Sequence[int], scores: Sequence[Optional[float]]) -> list[SearchHit]:
        return [SearchHit(rank + 1, int(row), self.names[int(row)], None if score is None else float(score),
                          self.image_path(int(row)))
                for rank, (row, score) in enumerate(zip(rows, scores))]

    def text_query(self, text: str, k: int = 10) -> list[SearchHit]:
        """Top-``k`` collection images for ``text`` (cosine similarity of text and image embeddings)."""
        text = check_text(text, required=True)
        k = check_k(k)
        with self._lock:
            query = self.ctx.text_embeddings([text])
            scores, rows = self._top_rows(query, k)
        return self._hits(rows, scores)

    def composed_query(self, text: str, method: str, k: int = 10, reference_row: Optional[int] = None,
                       upload_id: Optional[str] = None) -> list[SearchHit]:
        """Top-``k`` collection images for reference image (``reference_row`` of the collection, or
        an uploaded image ``upload_id``) + modification ``text`` by registered method ``method``;
        the reference row itself is excluded."""
        text = check_text(text, required=False)
        k = check_k(k)
        if method not in self.methods:
            raise InputError(f"method {method!r} is not served; choose one of {', '.join(self.methods)}",
                             field="method")
        if (reference_row is None) == (upload_id is None):
            raise InputError("a composed query needs exactly one reference: a collection image or an upload",
                             field="reference")
        if upload_id is not None:
            reference, reference_path, excluded = upload_id, self.upload_path(upload_id), -1
        else:
            reference = self.gallery_id(reference_row)
            reference_path, excluded = self.split.image_path(reference), int(reference_row)
        split = dataclasses.replace(
            self.split, queries=[CIRQuery(query_id="query", reference=reference, captions=(text,))],
            image_paths={**self.split.image_paths, reference: reference_path})
        chosen = self.methods[method]
        with self._lock:
            if isinstance(chosen, EmbeddingMethod):
                query = self.ctx.query_embeddings(chosen, split)
                if type(chosen).gallery_embeddings is EmbeddingMethod.gallery_embeddings:
                    scores, rows = self._top_rows(query, k, excluded)
                    return self._hits(rows, scores)
                gallery = chosen.gallery_embeddings(self.ctx, split)
                scores, indices = search(query, gallery, k, exclude=np.array([excluded], np.int64))
                return self._hits(indices[0].tolist(), scores[0].tolist())
            rankings, _ = chosen.rank_split(self.ctx, split)
        ranked = [int(i) for i in rankings["query"] if i != reference][:k]
        return self._hits(ranked, [None] * len(ranked))


def reference_row(search: CollectionSearch, reference: str) -> int:
    """The collection row of ``reference``: an ``image_name`` of the collection, or a row number."""
    if reference in search.names:
        return search.names.index(reference)
    if reference.strip().isdigit() and int(reference) < search.size:
        return int(reference)
    raise InputError(f"reference {reference!r} is neither an image name of the collection nor a row "
                     f"0..{search.size - 1}", path=search.folder, field="reference")


def check_text(text: Any, required: bool) -> str:
    """The query text, stripped; :class:`InputError` when it is not a string or is empty but required."""
    if not isinstance(text, str):
        raise InputError(f"query text must be a string, got {type(text).__name__}", field="text")
    text = text.strip()
    if required and not text:
        raise InputError("type a query text (it is empty)", field="text")
    return text


def check_k(k: Any) -> int:
    """``k`` as a positive int (:class:`InputError` otherwise)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}", field="k")
    return k


def check_collection_transform(loaded: Any, folder: os.PathLike | str) -> None:
    """:class:`InputError` unless ``loaded``'s image transform is the one recorded in the
    collection's ``irkit_collection.json`` (when it records one)."""
    recorded = read_collection_info(folder).get("transform")
    if recorded is None or loaded.transform_config is None:
        return
    current = json.loads(json.dumps(loaded.transform_config.to_dict()))
    if recorded != current:
        raise InputError(f"collection was embedded with transform {recorded} but the query model uses {current} "
                         "(expected the same --transform)", path=Path(folder) / "irkit_collection.json")


def open_collection_search(folder: os.PathLike | str, loaded: Any,
                           methods: Sequence[str] = DEFAULT_APP_METHODS,
                           checkpoints: Optional[Mapping[str, Any]] = None,
                           options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                           cache_dir: Optional[os.PathLike | str] = None, batch_size: int = 64,
                           num_workers: int = 0, exact: bool = True) -> CollectionSearch:
    """A :class:`CollectionSearch` over the collection at ``folder`` with backbone ``loaded`` (an
    ``irkit.models.LoadedModel``) and the registered ``methods``, each built with its checkpoint
    (``checkpoints[name]``) and options (``options[name]``); ``exact=False`` lets the collection's
    ANN index answer where it applies."""
    checkpoints, options = dict(checkpoints or {}), dict(options or {})
    unknown = sorted((set(checkpoints) | set(options)) - set(methods))
    if unknown:
        raise InputError(f"checkpoint/options given for method(s) {unknown} that are not served "
                         f"(served: {', '.join(methods)})", field="method")
    built = {name: create_method(name, **method_options(name, checkpoints.get(name), False, options.get(name)))
             for name in dict.fromkeys(methods)}
    ctx = CIRContext(loaded, cache_dir=None if cache_dir is None else Path(cache_dir), batch_size=batch_size,
                     num_workers=num_workers)
    return CollectionSearch(folder, ctx, built, exact=exact)
