"""Frozen CLIP features of CIR splits, and triplet batches for training heads on them.

The heads of docs/methods.md §D-G (MagicLens fusion, vision projector, Combiner, re-ranker) are
trained and evaluated on *frozen* CLIP features:

* image embeddings, unnormalised (MagicLens and CLIP4Cir feed ``encode_image`` outputs),
  from :meth:`irkit.cir.context.CIRContext.raw_image_embeddings`, which goes through
  :func:`irkit.embeddings.encode_image_files`' on-disk cache;
* text embeddings, unnormalised, of each query's text (the benchmark's ``query_text``);
* optionally the images' patch tokens [N, P, D] (the re-ranker's candidates), cached on
  disk with the same key material and files as the embedding cache
  (:func:`encode_image_tokens`).

:class:`CIRFeatures` holds them for one split (or several concatenated, e.g. FashionIQ's
three categories); :class:`TripletBatches` yields shuffled training batches whose order
depends only on ``(seed, epoch)``, as :func:`irkit.train.loop.train` needs for exact resume.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from irkit.benchmarks import benchmark_of
from irkit.cir.context import CIRContext, encode_token_ids
from irkit.data.records import CIRSplit
from irkit.errors import InputError
from irkit.finite import require_finite
from irkit.io import stable_hash
from irkit.models import warn_truncated
from irkit.transforms import BENCHMARK_READER, ImageReader

#: In-process memo of encoded features (validation re-encodes the same split many times).
_MEMO: "OrderedDict[str, Any]" = OrderedDict()
_MEMO_SIZE = 16


def _memoised(key_material: Any, compute) -> Any:
    key = stable_hash(key_material)
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    value = compute()
    _MEMO[key] = value
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return value


def _model_key(loaded: Any) -> dict[str, Any]:
    return {"model": loaded.model_name, "weights": loaded.weights_id, "precision": loaded.precision,
            "subnormals": loaded.subnormals,
            "transform": loaded.transform_config.to_dict() if loaded.transform_config is not None else None}


# --------------------------------------------------------------------------- encoders


def raw_text_embeddings(loaded: Any, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """[N, D] float32 UNnormalised text embeddings (each distinct text encoded once)."""
    texts = list(texts)
    unique = list(dict.fromkeys(texts))

    def compute() -> np.ndarray:
        if not unique:
            return np.zeros((0, loaded.embed_dim), np.float32)
        warn_truncated(loaded.tokenizer, unique, f"model '{loaded.model_name}'")
        encoded = encode_token_ids(loaded.model, loaded.tokenizer(unique), batch_size,
                                   loaded.precision).numpy().astype(np.float32)
        return require_finite(encoded, "text embeddings", f"model '{loaded.model_name}' "
                              f"({getattr(loaded, 'weights_source', '') or loaded.weights_id})")

    encoded = _memoised({"kind": "raw_text", **_model_key(loaded), "texts": unique}, compute)
    position = {text: i for i, text in enumerate(unique)}
    return encoded[[position[t] for t in texts]] if texts else encoded


def memoised_raw_image_embeddings(ctx: CIRContext, split: CIRSplit, image_ids: Sequence[str]) -> np.ndarray:
    """[N, D] float32 UNnormalised image embeddings of ``image_ids`` (disk cache + memo)."""
    from irkit.embeddings import file_fingerprints

    fingerprints = file_fingerprints([split.image_path(i) for i in image_ids])  # path, size, content hash
    return _memoised({"kind": "raw_image", **_model_key(ctx.loaded), "reader": ctx.reader.to_dict(),
                      "files": fingerprints},
                     lambda: ctx.raw_image_embeddings(split, list(image_ids)))


def patch_tokens(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] pixels -> [B, P, D] patch tokens of an open_clip ViT, in the joint space.

    The tokens are the image tower's final-LayerNorm patch outputs (``output_tokens``),
    mapped by the tower's own projection (``visual.proj``) so they share the width D of
    the image embedding.
    """
    visual = model.visual
    if hasattr(visual, "attnpool") and hasattr(visual, "stem"):
        return _resnet_spatial_tokens(visual, pixels)
    if not hasattr(visual, "output_tokens") or not hasattr(visual, "proj"):
        raise InputError(f"the image tower {type(visual).__name__} does not expose patch tokens; the re-ranker "
                         "needs an open_clip VisionTransformer or ModifiedResNet tower", field="model")
    previous = visual.output_tokens
    visual.output_tokens = True
    try:
        _, tokens = visual(pixels)
    finally:
        visual.output_tokens = previous
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return tokens


def _resnet_spatial_tokens(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """ModifiedResNet: the final feature map's cells as tokens [B, h*w, D], each mapped into the
    joint space by the attention pool's value and output projections (the path a cell's
    content takes into the pooled image embedding)."""
    x = visual.stem(pixels)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    cells = x.flatten(2).transpose(1, 2)                           # [B, h*w, C]
    cells = cells + visual.attnpool.positional_embedding[1:].to(cells.dtype)
    return visual.attnpool.c_proj(visual.attnpool.v_proj(cells))


def encode_image_tokens(loaded: Any, paths: Sequence[os.PathLike | str], batch_size: int = 64,
                        num_workers: int = 2, cache_dir: Optional[os.PathLike | str] = None,
                        reader: ImageReader = BENCHMARK_READER) -> np.ndarray:
    """Image files -> [N, P, D] float16 patch tokens (:func:`patch_tokens`), in ``paths`` order.

    Cached like :func:`irkit.embeddings.encode_image_files` (same key material — model,
    weights, precision, transform, file fingerprints — with ``kind`` set to
    ``image_patch_tokens``, same ``<key>.npy`` + ``<key>.json`` entries and checks).
    """
    from irkit import embeddings

    if batch_size <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}", field="batch_size")
    paths = [Path(p) for p in paths]
    fingerprints = embeddings.file_fingerprints(paths)
    material = dict(embeddings.image_cache_material(loaded, fingerprints, reader=reader), kind="image_patch_tokens",
                    token_space="visual.proj")
    key = stable_hash(material)

    def compute() -> np.ndarray:
        if cache_dir is not None:
            cached = embeddings.load_cached_array(Path(cache_dir), key, material)
            if cached is not None:
                return cached
        tokens = _encode_tokens_uncached(loaded, paths, batch_size, num_workers, reader)
        if cache_dir is not None:
            embeddings.save_cached_array(Path(cache_dir), key, material, tokens)
        return tokens

    return _memoised({"kind": "tokens", "key": key}, compute)


#: Images per patch-token cache entry when tokens are requested for a subset of a gallery.
TOKEN_CHUNK = 1024


def image_tokens_for(ctx: CIRContext, split: CIRSplit, ordered_ids: Sequence[str], needed_ids: Sequence[str],
                     chunk_size: int = TOKEN_CHUNK) -> tuple[torch.Tensor, dict[str, int]]:
    """Patch tokens of ``needed_ids`` -> (``[U, P, D]`` float16, ``{id: row}``).

    ``ordered_ids`` (a stable order such as the gallery's) is cut into fixed chunks of
    ``chunk_size``; every chunk holding a needed id is encoded and cached on its own, so
    another top-K set of the same gallery (another K, another stage-I method) reuses the
    cache instead of re-encoding. ``U`` covers the touched chunks (a superset of the needed ids).
    """
    position = {image_id: i for i, image_id in enumerate(ordered_ids)}
    missing = [i for i in needed_ids if i not in position]
    if missing:
        raise ValueError(f"{len(missing)} needed ids are not in ordered_ids (first: {missing[0]!r})")
    chunks = sorted({position[i] // chunk_size for i in needed_ids})
    parts, rows = [], {}
    for chunk in chunks:
        ids = list(ordered_ids[chunk * chunk_size:(chunk + 1) * chunk_size])
        offset = sum(len(p) for p in parts)
        parts.append(encode_image_tokens(ctx.loaded, [split.image_path(i) for i in ids], batch_size=ctx.batch_size,
                                         num_workers=ctx.num_workers, cache_dir=ctx.cache_dir, reader=ctx.reader))
        rows.update({image_id: offset + j for j, image_id in enumerate(ids)})
    if not parts:
        return torch.zeros(0, 0, ctx.loaded.embed_dim, dtype=torch.float16), rows
    return torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0]), rows


def _encode_tokens_uncached(loaded: Any, paths: Sequence[Path], batch_size: int, num_workers: int,
                            reader: ImageReader = BENCHMARK_READER) -> np.ndarray:
    from irkit import embeddings

    if not paths:
        return np.zeros((0, 0, loaded.embed_dim), np.float16)
    dataset = embeddings.ImageFileDataset(paths, loaded.preprocess, reader)
    workers = max(0, min(num_workers, -(-len(paths) // batch_size)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=embeddings.collate_decoded)
    out: Optional[np.ndarray] = None
    with embeddings.torch_threads(), torch.inference_mode(), loaded.autocast(), \
            tqdm(total=len(paths), desc="patch tokens", unit="img", disable=len(paths) < 2 * batch_size) as bar:
        for indices, pixels, errors in loader:
            if errors:
                index, message = errors[0]
                raise embeddings.decode_error(paths[index], message)
            tokens = patch_tokens(loaded.model, pixels.to(loaded.device, loaded.input_dtype)).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(paths),) + tokens.shape[1:], np.float16)
            out[indices.numpy()] = tokens.astype(np.float16)
            bar.update(len(indices))
    assert out is not None
    return require_finite(out, "image patch tokens", f"model '{loaded.model_name}' "
                          f"({getattr(loaded, 'weights_source', '') or loaded.weights_id})")


# --------------------------------------------------------------------------- split features


@dataclass
class CIRFeatures:
    """Frozen features of the queries (and images) of one or more CIR splits.

    ``images`` [M, D] are unnormalised image embeddings of ``image_ids``; a query's
    reference / target are rows ``reference_index`` / ``target_index`` (-1: no target);
    ``text`` [Q, D] are the unnormalised embeddings of the query texts; ``empty_text`` [D]
    that of the empty instruction (MagicLens targets); ``tokens`` [M, P, D] float16 patch
    tokens when requested. ``gallery_index`` [G] lists the gallery's rows, in
    ``split.gallery`` order, when the gallery was encoded (one split only).
    ``negative_index`` [Q, N] (re-ranker hard negatives): image rows of each query's
    stage-I candidates in rank order, its target left out, -1 padding.
    """

    splits: list[CIRSplit]
    image_ids: list[str]
    images: torch.Tensor
    reference_index: torch.Tensor
    target_index: torch.Tensor
    text: torch.Tensor
    empty_text: torch.Tensor
    texts: list[str] = field(default_factory=list)
    gallery_index: Optional[torch.Tensor] = None
    tokens: Optional[torch.Tensor] = None
    negative_index: Optional[torch.Tensor] = None

    @property
    def num_queries(self) -> int:
        return int(self.reference_index.shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.images.shape[1])

    @property
    def reference(self) -> torch.Tensor:
        """[Q, D] reference image embeddings."""
        return self.images[self.reference_index]

    @property
    def gallery(self) -> torch.Tensor:
        """[G, D] gallery image embeddings in ``split.gallery`` order."""
        if self.gallery_index is None:
            raise ValueError("these features were built without the gallery (with_gallery=False)")
        return self.images[self.gallery_index]


def split_query_texts(split: CIRSplit, include_shared_concept: bool = False) -> list[str]:
    """The query text of every query (the benchmark's template-free ``query_text``)."""
    benchmark = benchmark_of(split)
    return [benchmark.query_text(q, include_shared_concept) for q in split.queries]


def build_features(ctx: CIRContext, split: CIRSplit, *, include_shared_concept: bool = False,
                   with_gallery: bool = True, require_targets: bool = False,
                   with_tokens: bool = False, negatives: Optional[Any] = None,
                   negative_pool: Optional[int] = None) -> CIRFeatures:
    """Encode one split: references, texts, targets and (``with_gallery``) the gallery.

    ``require_targets`` keeps only queries with a target and fails when none has one
    (training). With ``with_tokens`` the patch tokens of every encoded image are added.
    ``negatives``: a stage-I top-K of this split (:class:`irkit.cir.topk.TopK`); its
    first ``negative_pool`` candidates per query (default all), less the target, are encoded
    too and listed in ``negative_index`` (re-ranker training on hard negatives).
    """
    queries = split.queries
    if require_targets:
        queries = [q for q in queries if q.target is not None]
        if not queries:
            raise InputError(f"{split.dataset}-{split.split} has no query with a target; expected training "
                             "triplets (reference, text, target)", path=split.root)
        split = replace(split, queries=queries)
    candidates = _negative_candidates(split, negatives, negative_pool) if negatives is not None else None
    ordered = list(split.gallery) if with_gallery else []
    ordered += [q.reference for q in queries] + [q.target for q in queries if q.target is not None]
    if candidates is not None:
        ordered += [c for pool in candidates for c in pool]
    image_ids = list(dict.fromkeys(ordered))
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    images = torch.from_numpy(np.ascontiguousarray(memoised_raw_image_embeddings(ctx, split, image_ids)))
    texts = split_query_texts(split, include_shared_concept)
    text_and_empty = raw_text_embeddings(ctx.loaded, texts + [""])
    tokens = None
    if with_tokens:  # every chunk is touched, so the rows are in image_ids order
        tokens, _ = image_tokens_for(ctx, split, image_ids, image_ids)
    return CIRFeatures(
        splits=[split], image_ids=image_ids, images=images,
        reference_index=torch.tensor([row[q.reference] for q in queries], dtype=torch.long),
        target_index=torch.tensor([row[q.target] if q.target is not None else -1 for q in queries],
                                  dtype=torch.long),
        text=torch.from_numpy(np.ascontiguousarray(text_and_empty[:-1])),
        empty_text=torch.from_numpy(np.ascontiguousarray(text_and_empty[-1])),
        texts=texts,
        gallery_index=torch.tensor([row[g] for g in split.gallery], dtype=torch.long) if with_gallery else None,
        tokens=tokens,
        negative_index=_padded_rows(candidates, row) if candidates is not None else None,
    )


def _negative_candidates(split: CIRSplit, negatives: Any, pool: Optional[int]) -> list[list[str]]:
    """Per query of ``split``: its first ``pool`` stage-I candidates without its target."""
    if pool is not None and pool <= 0:
        raise InputError(f"negative pool is {pool}; expected a positive number of candidates", field="negative_pool")
    by_query = dict(zip(negatives.query_ids, negatives.ids))
    missing = [q.query_id for q in split.queries if q.query_id not in by_query]
    if missing:
        raise InputError(f"the hard-negative top-K ({negatives.dataset}-{negatives.split}) has no candidates for "
                         f"{len(missing)} queries of {split.dataset}-{split.split} (first: {missing[0]!r}); "
                         "expected a stage-I top-K of the training split", field="negatives")
    benchmark = benchmark_of(split)
    images = [[benchmark.candidate_image(q, c) for c in by_query[q.query_id][:pool]] for q in split.queries]
    return [[image for image in pool_images if image != q.target] for q, pool_images in zip(split.queries, images)]


def _padded_rows(pools: Sequence[Sequence[str]], row: dict[str, int]) -> torch.Tensor:
    """[Q, max pool] image rows of ``pools``, -1 where a pool is shorter."""
    width = max((len(p) for p in pools), default=0)
    out = torch.full((len(pools), width), -1, dtype=torch.long)
    for i, pool in enumerate(pools):
        out[i, :len(pool)] = torch.tensor([row[c] for c in pool], dtype=torch.long)
    return out


def concat_features(parts: Sequence[CIRFeatures]) -> CIRFeatures:
    """Concatenate features of several splits (e.g. FashionIQ categories) for training.

    Images are kept per part (an id shared by two parts appears twice), so in-batch
    negatives compare rows, and ``gallery_index`` is dropped.
    """
    if not parts:
        raise InputError("no training splits given")
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p.images.shape[0] for p in parts[:-1]])
    has_tokens = all(p.tokens is not None for p in parts)
    negative_index = None
    if all(p.negative_index is not None for p in parts):
        width = max(p.negative_index.shape[1] for p in parts)
        negative_index = torch.cat([F.pad(torch.where(p.negative_index >= 0, p.negative_index + int(o), -1),
                                          (0, width - p.negative_index.shape[1]), value=-1)
                                    for p, o in zip(parts, offsets)])
    return CIRFeatures(
        splits=[s for p in parts for s in p.splits],
        image_ids=[i for p in parts for i in p.image_ids],
        images=torch.cat([p.images for p in parts]),
        reference_index=torch.cat([p.reference_index + int(o) for p, o in zip(parts, offsets)]),
        target_index=torch.cat([torch.where(p.target_index >= 0, p.target_index + int(o), p.target_index)
                                for p, o in zip(parts, offsets)]),
        text=torch.cat([p.text for p in parts]),
        empty_text=parts[0].empty_text,
        texts=[t for p in parts for t in p.texts],
        tokens=torch.cat([p.tokens for p in parts]) if has_tokens else None,
        negative_index=negative_index,
    )


def build_training_features(ctx: CIRContext, splits: Sequence[CIRSplit], *, include_shared_concept: bool = False,
                            with_tokens: bool = False, negatives: Sequence[Any] = (),
                            negative_pool: Optional[int] = None) -> CIRFeatures:
    """Features of the training triplets of ``splits`` (queries without a target are skipped);
    ``negatives``: one stage-I top-K per split, in order (hard negatives, :func:`build_features`)."""
    if negatives and len(negatives) != len(splits):
        raise InputError(f"{len(negatives)} hard-negative top-K parts for {len(splits)} training splits; "
                         "expected one per split", field="negatives")
    return concat_features([
        build_features(ctx, s, include_shared_concept=include_shared_concept, with_gallery=False,
                       require_targets=True, with_tokens=with_tokens,
                       negatives=negatives[i] if negatives else None, negative_pool=negative_pool)
        for i, s in enumerate(splits)
    ])


# --------------------------------------------------------------------------- batches and loss


class TripletBatches:
    """``batches(epoch)`` -> shuffled batches of training triplets, a function of (seed, epoch).

    Each batch is a dict: ``reference`` [B, D], ``text`` [B, D], ``target`` [B, D],
    ``target_index`` [B] (image rows, to recognise duplicate targets), ``empty_text`` [D],
    and with tokens ``target_tokens`` [B, P, D] float32. A set smaller than ``batch_size``
    is one batch; otherwise the last partial batch is dropped.

    ``num_negatives`` > 0 (features with ``negative_index``) adds per query that many hard
    negatives drawn without replacement from its stage-I pool, a function of (seed, epoch):
    ``negative`` [B, N, D], ``negative_tokens`` [B, N, P, D] (with tokens) and
    ``negative_mask`` [B, N] (False where the pool had fewer than N candidates).
    """

    def __init__(self, features: CIRFeatures, batch_size: int, seed: int = 0, with_tokens: bool = False,
                 num_negatives: int = 0) -> None:
        if batch_size <= 0:
            raise InputError(f"batch size must be positive, got {batch_size}", field="batch_size")
        if features.num_queries == 0:
            raise InputError("no training triplets; expected at least one (reference, text, target)")
        if (features.target_index < 0).any():
            raise InputError("training features contain queries without a target")
        if with_tokens and features.tokens is None:
            raise ValueError("with_tokens needs features built with with_tokens=True")
        if num_negatives < 0:
            raise InputError(f"num_negatives is {num_negatives}; expected >= 0", field="hard_negatives")
        if num_negatives and features.negative_index is None:
            raise ValueError("num_negatives needs features built with stage-I negatives (negative_index)")
        self.features, self.batch_size, self.seed, self.with_tokens = features, batch_size, seed, with_tokens
        self.num_negatives = num_negatives

    def __len__(self) -> int:
        n = self.features.num_queries
        return 1 if n < self.batch_size else n // self.batch_size

    def __call__(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        from irkit.train.loop import index_batches

        f = self.features
        for rows in index_batches(f.num_queries, self.batch_size, self.seed, epoch):
            target_index = f.target_index[rows]
            batch = {"reference": f.images[f.reference_index[rows]], "text": f.text[rows],
                     "target": f.images[target_index], "target_index": target_index, "empty_text": f.empty_text}
            if self.with_tokens:
                batch["target_tokens"] = f.tokens[target_index].float()
            if self.num_negatives:
                batch.update(self._negatives(rows, epoch))
            yield batch

    def _negatives(self, rows: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        """Hard negatives of the queries ``rows``: a seeded random subset of each stage-I pool."""
        pools = self.features.negative_index[rows]
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 7919 + int(rows[0]))
        keys = torch.rand(pools.shape, generator=generator).masked_fill(pools < 0, float("inf"))
        order = keys.argsort(dim=1)[:, :self.num_negatives]
        picked = pools.gather(1, order)
        if picked.shape[1] < self.num_negatives:  # pool narrower than N: pad, masked below
            picked = F.pad(picked, (0, self.num_negatives - picked.shape[1]), value=-1)
        mask = picked >= 0
        picked = picked.clamp(min=0)
        out = {"negative": self.features.images[picked], "negative_mask": mask}
        if self.with_tokens:
            out["negative_tokens"] = self.features.tokens[picked].float()
        return out


def in_batch_contrastive_loss(logits: torch.Tensor, target_index: torch.Tensor,
                              extra_logits: Optional[torch.Tensor] = None,
                              rows: Optional[slice] = None) -> torch.Tensor:
    """Cross-entropy of [B, B] query-vs-batch-target logits against the diagonal.

    Where two queries of the batch share a target image (same ``target_index``), the
    duplicate off-diagonal entry is masked out so the true target is never a negative.
    ``extra_logits`` [B, N]: each query's own further negatives (hard negatives; -inf
    entries are ignored), appended to its row of candidates.

    Several processes: ``rows`` (:func:`irkit.distributed.local_rows`) are this rank's queries;
    ``logits`` [b, B] and ``extra_logits`` [b, N] hold only those rows against all B targets
    of the global batch (``target_index`` [B]); the mean over the b rows is scaled by
    :func:`irkit.distributed.local_share` so the rank-averaged gradient is the global one.
    """
    from irkit import distributed

    count = len(target_index)
    rows = rows if rows is not None else slice(0, count)
    positives = torch.arange(rows.start, rows.stop, device=logits.device)
    same_target = target_index[rows][:, None] == target_index[None, :]
    not_positive = torch.ones_like(same_target)
    not_positive[torch.arange(len(positives)), positives] = False
    logits = logits.masked_fill(same_target & not_positive, float("-inf"))
    if extra_logits is not None:
        logits = torch.cat([logits, extra_logits], dim=1)
    return F.cross_entropy(logits, positives) * distributed.local_share(count)
