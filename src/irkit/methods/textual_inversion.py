"""Shared parts of the textual-inversion methods (SEARLE, SEARLE-OTI, LinCIR).

* concept vocabulary and regularisation phrases (plain text files, methods.md §B);
* losses: cosine distance, the symmetric contrastive (NT-Xent) distillation loss, the
  phrase regulariser;
* the inference prompt ``a photo of $ that {caption}`` (FashionIQ: both caption orders);
* :class:`PseudoTokenMethod` / :class:`PhiMethod`, the :class:`~irkit.methods.CIRMethod`
  bases whose query is the prompt encoded with one pseudo token per reference image;
* phi training on :func:`irkit.train.loop.train` with a CIR validation split
  (:class:`PhiValidator`, best checkpoint kept);
* running ANY registered method: :func:`evaluate_method` (metrics via
  :mod:`irkit.eval.protocols`), :func:`write_method_submission` (test-server files), and the
  notebook helpers :func:`review_cir_method` / :func:`review_grid`.

Shapes: d = joint embedding width, w = token embedding width, B = batch.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError
from irkit.io import atomic_write_text, stable_hash
from irkit.methods.base import CIRContext, CIRMethod, l2_normalize
from irkit.models.pseudo_token import (
    PLACEHOLDER,
    InjectionMode,
    encode_with_pseudo_tokens,
    placeholder_token_id,
    tokenize_prompts,
)

log = logging.getLogger(__name__)

#: SEARLE's and LinCIR's inference prompt; ``$`` is the pseudo word of the reference image.
PROMPT_TEMPLATE = "a photo of $ that {caption}"
#: CIRCO with ``include_shared_concept``: the shared concept goes into the caption like this.
SHARED_CONCEPT_CAPTION = "shows {concept} but {caption}"
#: Characters stripped from both ends of FashionIQ captions (the published ``strip('.?, ')``).
FASHIONIQ_STRIP = ".?, "
DEFAULT_CONCEPTS = "concepts.txt"
DEFAULT_PHRASE_TEMPLATES = "phrase_templates.txt"


# --------------------------------------------------------------------------- concepts and phrases


@dataclass(frozen=True)
class Phrase:
    """One regularisation phrase: ``text`` mentions ``concept``; ``masked`` has it replaced by ``$``."""

    concept: str
    text: str
    masked: str


@dataclass
class PhraseBank:
    """Concepts and their phrases (SEARLE's ``concept_to_phrases``), in file order."""

    concepts: list[str]
    phrases: list[Phrase]
    source: str = "irkit default (templates x vocabulary)"
    _by_concept: dict[str, list[int]] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._by_concept = {c: [] for c in self.concepts}
        for i, phrase in enumerate(self.phrases):
            self._by_concept.setdefault(phrase.concept, []).append(i)
        empty = [c for c, idx in self._by_concept.items() if not idx]
        if empty:
            raise InputError(f"concept(s) {empty[:5]} have no phrase; expected at least one phrase per concept",
                             path=self.source)

    def phrase_indices(self, concept: str) -> list[int]:
        """Indices into :attr:`phrases` of the phrases of ``concept``."""
        return self._by_concept[concept]

    def fingerprint(self) -> str:
        """Hash of every phrase (part of OTI / training cache keys)."""
        return stable_hash([(p.concept, p.text, p.masked) for p in self.phrases])


def _resource_path(name: str) -> Path:
    return Path(str(resources.files("irkit.resources").joinpath(name)))


def _content_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank, non-comment lines of a UTF-8 text file."""
    if not path.is_file():
        raise InputError("file not found (expected a UTF-8 text file)", path=path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text: {e}", path=path) from None
    return [(n, line.rstrip("\r\n")) for n, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def read_concepts(path: Optional[Path | str] = None) -> list[tuple[str, str]]:
    """``[(concept, kind)]`` from a concepts file (``concept`` or ``concept<TAB>kind`` lines)."""
    path = Path(path) if path is not None else _resource_path(DEFAULT_CONCEPTS)
    concepts: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, line in _content_lines(path):
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) > 2 or not parts[0]:
            raise InputError(f"expected '<concept>' or '<concept><TAB><kind>', found {line!r}", path=path, line=number)
        concept, kind = parts[0], (parts[1] if len(parts) == 2 and parts[1] else "object")
        if PLACEHOLDER in concept:
            raise InputError(f"concept {concept!r} contains the placeholder '{PLACEHOLDER}'", path=path, line=number)
        if concept not in seen:
            seen.add(concept)
            concepts.append((concept, kind))
    if not concepts:
        raise InputError("no concepts found; expected one concept per line", path=path)
    return concepts


def read_phrase_templates(path: Optional[Path | str] = None) -> dict[str, list[str]]:
    """``{kind: [template with one '{}']}`` from a ``kind<TAB>template`` file."""
    path = Path(path) if path is not None else _resource_path(DEFAULT_PHRASE_TEMPLATES)
    templates: dict[str, list[str]] = {}
    for number, line in _content_lines(path):
        parts = line.split("\t")
        if len(parts) != 2 or parts[1].count("{}") != 1 or PLACEHOLDER in parts[1]:
            raise InputError(f"expected '<kind><TAB><template with exactly one {{}}>', found {line!r}",
                             path=path, line=number)
        templates.setdefault(parts[0].strip(), []).append(parts[1].strip())
    if not templates:
        raise InputError("no phrase templates found", path=path)
    return templates


def build_phrases(concepts: Sequence[tuple[str, str]], templates: Mapping[str, Sequence[str]],
                  source: str = "irkit default (templates x vocabulary)") -> PhraseBank:
    """Every template of a concept's kind filled with the concept (and with ``$``)."""
    missing = sorted({kind for _, kind in concepts if kind not in templates})
    if missing:
        raise InputError(f"concept kind(s) {missing} have no phrase templates; template kinds: {sorted(templates)}",
                         path=source)
    phrases = [Phrase(concept, t.format(concept), t.format(PLACEHOLDER))
               for concept, kind in concepts for t in templates[kind]]
    return PhraseBank([c for c, _ in concepts], phrases, source=source)


def mask_concept(phrase: str, concept: str) -> Optional[str]:
    """``phrase`` with the first whole-word occurrence of ``concept`` replaced by ``$`` (or None)."""
    pattern = re.compile(rf"(?<![\w-]){re.escape(concept)}(?![\w-])", re.IGNORECASE)
    if not pattern.search(phrase):
        return None
    return pattern.sub(PLACEHOLDER, phrase, count=1)


def read_phrases(path: Path | str) -> PhraseBank:
    """A phrase file (``concept<TAB>phrase`` lines, e.g. converted GPT-Neo phrases).

    As the published code does, a concept with a phrase that does not contain it as a word is
    dropped entirely (logged); a file where that leaves nothing is an :class:`InputError`.
    """
    path = Path(path)
    rows: list[tuple[str, str, Optional[str]]] = []
    for number, line in _content_lines(path):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise InputError(f"expected '<concept><TAB><phrase>', found {line!r}", path=path, line=number)
        concept, phrase = parts[0].strip(), parts[1].strip().replace(PLACEHOLDER, "")
        rows.append((concept, phrase, mask_concept(phrase, concept)))
    dropped = sorted({c for c, _, masked in rows if masked is None})
    if dropped:
        log.warning("%s: dropped %d concept(s) with a phrase that does not contain the concept (e.g. %s)",
                    path, len(dropped), dropped[:3])
    kept = [Phrase(c, p, m) for c, p, m in rows if c not in set(dropped) and m is not None]
    if not kept:
        raise InputError("no usable phrases: every concept has a phrase that does not contain it", path=path)
    return PhraseBank(list(dict.fromkeys(p.concept for p in kept)), kept, source=str(path))


def write_phrases(path: Path | str, bank: PhraseBank) -> Path:
    """Write ``concept<TAB>phrase`` lines atomically (readable by :func:`read_phrases`)."""
    lines = ["# concept<TAB>phrase; irkit regularisation phrases, source: " + bank.source]
    lines += [f"{p.concept}\t{p.text}" for p in bank.phrases]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)


def load_phrase_bank(phrases: Optional[Path | str] = None, concepts: Optional[Path | str] = None,
                     templates: Optional[Path | str] = None) -> PhraseBank:
    """A phrase file when given, else phrases built from the concept and template files
    (irkit's defaults when those are not given either)."""
    if phrases is not None:
        return read_phrases(phrases)
    source = f"templates {templates or 'default'} x concepts {concepts or 'default'}"
    return build_phrases(read_concepts(concepts), read_phrase_templates(templates), source=source)


# --------------------------------------------------------------------------- model helpers


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Temporarily set ``requires_grad=False`` on every parameter of the CLIP model
    (pseudo tokens / phi get gradients through it; its own weights never do)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def encode_token_ids(model: torch.nn.Module, token_ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Plain text features [N, d] (unnormalised, float32, CPU) of token ids [N, L], no grad."""
    out = []
    device = model_device(model)
    with torch.no_grad():
        for start in range(0, token_ids.shape[0], batch_size):
            out.append(model.encode_text(token_ids[start:start + batch_size].to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


@dataclass
class EncodedPhrases:
    """A phrase bank tokenised and encoded once: targets of the phrase regulariser."""

    bank: PhraseBank
    masked_ids: torch.Tensor        # [P, L] token ids of the masked phrases (one $ each)
    embeddings: torch.Tensor        # [P, d] unnormalised text features of the phrases
    concept_embeddings: torch.Tensor  # [C, d] L2-normalised mean of each concept's phrase features

    @classmethod
    def encode(cls, model: torch.nn.Module, tokenizer: Any, bank: PhraseBank, batch_size: int = 256) -> "EncodedPhrases":
        masked_ids = tokenize_prompts(tokenizer, [p.masked for p in bank.phrases])
        embeddings = encode_token_ids(model, tokenizer([p.text for p in bank.phrases]), batch_size)
        normalised = F.normalize(embeddings, dim=-1)
        concept_embeddings = torch.stack([normalised[bank.phrase_indices(c)].mean(0) for c in bank.concepts])
        return cls(bank, masked_ids, embeddings, F.normalize(concept_embeddings, dim=-1))

    def top_concepts(self, image_embeddings: torch.Tensor, k: int) -> torch.Tensor:
        """[N, k] indices of the concepts most similar to each image (cosine), best first."""
        sims = F.normalize(image_embeddings.float(), dim=-1) @ self.concept_embeddings.T
        return torch.topk(sims, k=min(k, sims.shape[1]), dim=1).indices

    def sample(self, concept_choices: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """[B] phrase indices: per row of ``concept_choices`` [B, k], a random concept, then a
        random phrase of it (``generator``: torch's global RNG when None)."""
        rows = []
        picks = torch.randint(concept_choices.shape[1], (concept_choices.shape[0],), generator=generator)
        for b, pick in enumerate(picks.tolist()):
            candidates = self.bank.phrase_indices(self.bank.concepts[int(concept_choices[b, pick])])
            rows.append(candidates[int(torch.randint(len(candidates), (1,), generator=generator))])
        return torch.tensor(rows, dtype=torch.long)


# --------------------------------------------------------------------------- losses


def cosine_distance_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(a_i, b_i)) over rows of [B, d] (``nn.CosineEmbeddingLoss`` with target 1)."""
    return (1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)).mean()


def symmetric_contrastive_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the 2B L2-normalised rows of ``a`` and ``b`` [B, w]; (a_i, b_i) are positives.

    For each of the 2B rows: -log(exp(s_pos / T) / sum over the other 2B-1 rows of exp(s / T)),
    averaged (SEARLE's distillation loss, T = 0.25).
    """
    z = F.normalize(torch.cat([a.float(), b.float()]), dim=-1)
    n = a.shape[0]
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def phrase_regulariser(model: torch.nn.Module, placeholder_id: int, pseudo_tokens: torch.Tensor,
                       phrases: EncodedPhrases, phrase_indices: torch.Tensor) -> torch.Tensor:
    """L_reg = mean(1 - cos(E(masked phrase with the pseudo token), E(phrase))) for [B] phrases."""
    masked = phrases.masked_ids[phrase_indices]
    predicted = encode_with_pseudo_tokens(model, masked, pseudo_tokens, placeholder_id, "first")
    return cosine_distance_loss(predicted, phrases.embeddings[phrase_indices].to(predicted.device))


# --------------------------------------------------------------------------- prompts


def clean_caption(caption: str) -> str:
    """A caption as a prompt part: no placeholder characters, single spaces."""
    return " ".join(caption.replace(PLACEHOLDER, " ").split())


def query_prompts(query: CIRQuery, dataset: str, include_shared_concept: bool = False,
                  template: str = PROMPT_TEMPLATE) -> list[str]:
    """The prompt(s) of one query; several prompts are averaged (normalised) into one query.

    FashionIQ (methods.md §B): captions stripped of ``'.?, '``, both orders
    ``"{c1} and {c2}"`` / ``"{c2} and {c1}"``. CIRR/CIRCO: the caption; CIRCO with
    ``include_shared_concept``: ``"shows {shared_concept} but {caption}"``.
    """
    captions = [clean_caption(c) for c in query.captions]
    if dataset == "fashioniq" and len(captions) >= 2:
        c1, c2 = (c.strip(FASHIONIQ_STRIP) for c in captions[:2])
        return [template.format(caption=f"{c1} and {c2}"), template.format(caption=f"{c2} and {c1}")]
    caption = captions[0] if captions else ""
    if dataset == "circo" and include_shared_concept and query.shared_concept:
        caption = SHARED_CONCEPT_CAPTION.format(concept=clean_caption(query.shared_concept), caption=caption)
    return [template.format(caption=caption)]


def unique_references(split: CIRSplit) -> list[str]:
    """Reference image ids of the split's queries, first-appearance order, no duplicates."""
    return list(dict.fromkeys(q.reference for q in split.queries))


#: In-process memo of unnormalised embeddings (phi validation re-reads the same references).
_RAW_MEMO: dict[str, np.ndarray] = {}
_RAW_MEMO_SIZE = 8


def _as_list(items: list) -> list:
    return items


def raw_image_embeddings(loaded: Any, paths: Sequence[Path | str], batch_size: int = 64, num_workers: int = 2,
                         cache_dir: Optional[Path | str] = None) -> np.ndarray:
    """[N, d] float32 UNnormalised image embeddings (phi's input) of image files, in order.

    Uses :func:`irkit.embeddings.encode_image_files` (cached on disk) when it offers
    ``normalize=False``; otherwise decodes with its :class:`~irkit.embeddings.ImageFileDataset`
    and runs the image tower here (memoised in-process, keyed by model, weights, transform
    and the files' path/size/mtime).
    """
    import inspect

    from irkit import embeddings

    if "normalize" in inspect.signature(embeddings.encode_image_files).parameters:
        return embeddings.encode_image_files(loaded, paths, batch_size=batch_size, num_workers=num_workers,
                                             cache_dir=cache_dir, normalize=False)
    paths = [Path(p) for p in paths]
    fingerprints = []
    for path in paths:
        if not path.is_file():
            raise InputError("image file not found", path=path)
        stat = path.stat()
        fingerprints.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns))
    key = stable_hash({"model": loaded.model_name, "weights": loaded.weights_id, "precision": loaded.precision,
                       "transform": loaded.transform_name, "size": loaded.image_size, "files": fingerprints})
    if key in _RAW_MEMO:
        return _RAW_MEMO[key].copy()
    out = np.zeros((len(paths), loaded.embed_dim), dtype=np.float32)
    dataset = embeddings.ImageFileDataset(paths, loaded.preprocess)
    workers = max(0, min(num_workers, -(-len(paths) // max(batch_size, 1))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=_as_list)
    with torch.no_grad():
        for items in tqdm(loader, desc="images (unnormalised)", unit="batch", disable=len(paths) < 4 * batch_size):
            failed = [(i, err) for i, _, err in items if err is not None]
            if failed:
                raise InputError(f"cannot decode image ({failed[0][1]}); expected a readable image file",
                                 path=paths[failed[0][0]])
            pixels = torch.stack([t for _, t, _ in items]).to(loaded.device, loaded.input_dtype)
            out[[i for i, _, _ in items]] = loaded.model.encode_image(pixels).float().cpu().numpy()
    if len(_RAW_MEMO) >= _RAW_MEMO_SIZE:
        _RAW_MEMO.pop(next(iter(_RAW_MEMO)))
    _RAW_MEMO[key] = out.copy()
    return out


def split_raw_image_embeddings(ctx: CIRContext, split: CIRSplit, image_ids: Sequence[str]) -> np.ndarray:
    """[N, d] unnormalised image embeddings of ``image_ids`` of ``split``."""
    return raw_image_embeddings(ctx.loaded, [split.image_path(i) for i in image_ids], ctx.batch_size,
                                ctx.num_workers, ctx.cache_dir)


def encode_queries_with_tokens(loaded: Any, split: CIRSplit, reference_tokens: torch.Tensor,
                               reference_ids: Sequence[str], mode: InjectionMode,
                               include_shared_concept: bool = False, batch_size: int = 64,
                               progress: bool = True) -> np.ndarray:
    """[Q, d] L2-normalised query embeddings: every prompt of a query encoded with the pseudo
    token of its reference (``reference_tokens`` [R, w], rows in ``reference_ids`` order),
    each prompt's feature normalised, averaged over the query's prompts, normalised."""
    model, tokenizer = loaded.model, loaded.tokenizer
    placeholder_id = placeholder_token_id(tokenizer)
    row_of = {image_id: i for i, image_id in enumerate(reference_ids)}
    missing = [q.reference for q in split.queries if q.reference not in row_of]
    if missing:
        raise InputError(f"no pseudo token for reference image {missing[0]!r} ({len(missing)} missing); "
                         "expected one for every reference of the split (run OTI on this split)")
    prompts, owners, rows = [], [], []
    for qi, query in enumerate(split.queries):
        for prompt in query_prompts(query, split.dataset, include_shared_concept):
            prompts.append(prompt)
            owners.append(qi)
            rows.append(row_of[query.reference])
    features = np.zeros((len(prompts), loaded.embed_dim), dtype=np.float32)
    starts = range(0, len(prompts), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="queries", unit="batch", disable=not progress or len(starts) < 4):
            chunk = prompts[start:start + batch_size]
            ids = tokenize_prompts(tokenizer, chunk)
            pseudo = reference_tokens[rows[start:start + len(chunk)]]
            encoded = encode_with_pseudo_tokens(model, ids, pseudo, placeholder_id, mode)
            features[start:start + len(chunk)] = F.normalize(encoded.float(), dim=-1).cpu().numpy()
    summed = np.zeros((len(split.queries), features.shape[1]), dtype=np.float32)
    np.add.at(summed, np.asarray(owners, dtype=np.int64), features)
    return l2_normalize(summed)


class PseudoTokenMethod(CIRMethod):
    """Query = ``a photo of $ that {caption}`` with ``$`` := a pseudo token of the reference image."""

    mode: InjectionMode = "first"

    def __init__(self, include_shared_concept: bool = False) -> None:
        self.include_shared_concept = include_shared_concept

    @abc.abstractmethod
    def reference_tokens(self, ctx: CIRContext, split: CIRSplit, reference_ids: Sequence[str]) -> torch.Tensor:
        """[R, w] pseudo tokens, one per id of ``reference_ids``."""

    def query_embeddings(self, ctx: CIRContext, split: CIRSplit) -> np.ndarray:
        references = unique_references(split)
        tokens = self.reference_tokens(ctx, split, references) if references else torch.zeros(0, 1)
        return encode_queries_with_tokens(ctx.loaded, split, tokens, references, self.mode,
                                          self.include_shared_concept, batch_size=ctx.batch_size)


class PhiMethod(PseudoTokenMethod):
    """Pseudo tokens predicted by a phi network from the unnormalised reference image embedding."""

    def __init__(self, checkpoint: Optional[Path | str] = None, phi: Any = None,
                 include_shared_concept: bool = False) -> None:
        super().__init__(include_shared_concept)
        if phi is None and checkpoint is None:
            raise InputError(f"method '{self.name}' needs a phi checkpoint (--method-checkpoint PATH), "
                             f"e.g. from `irkit cir train-phi --method {self.name}`", field="method-checkpoint")
        self.checkpoint = checkpoint
        self.phi = phi

    def _phi(self, loaded: Any) -> torch.nn.Module:
        from irkit.models.phi import Phi
        from irkit.models.pseudo_token import embed_dim, token_width

        if self.phi is None:
            self.phi = Phi.from_checkpoint(self.checkpoint, embed_dim(loaded.model), token_width(loaded.model))
        return self.phi

    def reference_tokens(self, ctx: CIRContext, split: CIRSplit, reference_ids: Sequence[str]) -> torch.Tensor:
        phi = self._phi(ctx.loaded)
        features = torch.from_numpy(split_raw_image_embeddings(ctx, split, reference_ids))
        return predict_tokens(phi, features, ctx.batch_size)


def predict_tokens(phi: torch.nn.Module, features: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """phi (in eval mode) over [N, d] features -> [N, w] float32 CPU tokens, no grad."""
    was_training = phi.training
    phi.eval()
    device = next(phi.parameters()).device
    try:
        with torch.no_grad():
            out = [phi(features[s:s + batch_size].to(device).float()).float().cpu()
                   for s in range(0, features.shape[0], batch_size)]
    finally:
        phi.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


# --------------------------------------------------------------------------- evaluation


FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


def load_cir_splits(dataset: str, root: Path | str, split: str, **loader_options: Any) -> list[CIRSplit]:
    """The CIRSplit(s) of a benchmark split: three (one per category) for FashionIQ, else one."""
    from irkit.data.registry import load_dataset

    if dataset == "fashioniq" and loader_options.get("category") is None:
        options = {k: v for k, v in loader_options.items() if k != "category"}
        return [load_dataset(dataset, root, split, category=c, **options) for c in FASHIONIQ_CATEGORIES]
    return [load_dataset(dataset, root, split, **loader_options)]


def embed_splits(method: CIRMethod, ctx: CIRContext, splits: Sequence[CIRSplit]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(query embeddings [Q, D], gallery embeddings [G, D])]``, one pair per split."""
    return [(method.query_embeddings(ctx, split), method.gallery_embeddings(ctx, split)) for split in splits]


def combine_split_results(splits: Sequence[CIRSplit], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result for a benchmark split: FashionIQ's three categories ->
    :func:`~irkit.eval.protocols.combine_fashioniq`; a single split -> its own dict."""
    from irkit.eval import protocols

    if len(splits) == 3 and all(s.dataset == "fashioniq" for s in splits):
        return protocols.combine_fashioniq({s.category: r for s, r in zip(splits, results)})
    if len(splits) == 1:
        return dict(results[0])
    raise InputError(f"cannot combine results of {len(splits)} splits; expected one split, or the three "
                     "FashionIQ categories")


def score_embeddings(splits: Sequence[CIRSplit], embeddings: Sequence[tuple[np.ndarray, np.ndarray]],
                     include_shared_concept: Optional[bool] = None) -> dict[str, Any]:
    """Metrics of per-split (query, gallery) embeddings via :mod:`irkit.eval.protocols`."""
    from irkit.eval import protocols

    return combine_split_results(splits, [
        protocols.evaluate_embeddings(split, q, g, shared_concept=include_shared_concept
                                      if split.dataset == "circo" else None)
        for split, (q, g) in zip(splits, embeddings)])


def is_ranking_method(method: Any) -> bool:
    """Whether ``method`` ranks directly (``rank_split(ctx, split) -> (rankings, subsets)``,
    e.g. re-ranking) instead of producing query/gallery embeddings."""
    return callable(getattr(method, "rank_split", None))


def evaluate_method(method: CIRMethod, ctx: CIRContext, splits: Sequence[CIRSplit],
                    include_shared_concept: Optional[bool] = None) -> dict[str, Any]:
    """Metrics of any registered method on annotated split(s), plus ``"method"``.

    Embedding methods: :func:`score_embeddings`; ranking methods (:func:`is_ranking_method`):
    their rankings scored by :func:`irkit.eval.protocols.evaluate_rankings`.
    """
    from irkit.eval import protocols

    if is_ranking_method(method):
        results = []
        for split in splits:
            rankings, subsets = method.rank_split(ctx, split)
            results.append(protocols.evaluate_rankings(
                split, rankings, subset_rankings=subsets,
                shared_concept=include_shared_concept if split.dataset == "circo" else None))
        result = combine_split_results(splits, results)
    else:
        result = score_embeddings(splits, embed_splits(method, ctx, splits), include_shared_concept)
    result["method"] = method.name
    return result


#: The metric each benchmark's validation keeps the best phi by (higher is better).
SELECTION_METRIC = {"cirr": "(R@5+Rs@1)/2", "circo": "mAP@10", "fashioniq": "R@10"}


# --------------------------------------------------------------------------- phi training


@dataclass
class PhiTrainingConfig:
    """Hyper-parameters shared by SEARLE distillation and LinCIR training of phi."""

    steps: int = 1000
    batch_size: int = 256
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    dropout: float = 0.5
    validate_every: int = 100
    seed: int = 0

    def to_params(self) -> dict[str, Any]:
        return dict(self.__dict__)


def new_phi(input_dim: int, output_dim: int, config: PhiTrainingConfig, device: Any = "cpu") -> torch.nn.Module:
    """A freshly initialised :class:`~irkit.models.phi.Phi`, its weights a function of ``config.seed``."""
    from irkit.models.phi import Phi

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return Phi(input_dim, output_dim, dropout=config.dropout).to(device)


def flatten_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Numeric entries of an :func:`evaluate_method` result as ``{name: float}``.

    FashionIQ: the ``average`` entries at top level plus ``<category>/<metric>``.
    """
    flat: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, Mapping):
            prefix = "" if key == "average" else f"{key}/"
            flat.update({f"{prefix}{k}": float(v) for k, v in value.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat


class PhiValidator:
    """``phi -> {metric: value}`` on a CIR validation split (for :func:`irkit.train.loop.train`).

    Reference and gallery image embeddings are cached by the context, so each validation
    costs phi plus the text encoder over the split's prompts.
    """

    def __init__(self, ctx: CIRContext, splits: Sequence[CIRSplit],
                 method_factory: Callable[[torch.nn.Module], CIRMethod],
                 include_shared_concept: bool = False, metric: Optional[str] = None) -> None:
        if not splits:
            raise InputError("no validation split given")
        self.ctx, self.splits, self.method_factory = ctx, list(splits), method_factory
        self.include_shared_concept = include_shared_concept
        self.dataset = self.splits[0].dataset
        self.metric = metric or SELECTION_METRIC.get(self.dataset, "R@1")

    def __call__(self, phi: torch.nn.Module) -> dict[str, float]:
        result = evaluate_method(self.method_factory(phi), self.ctx, self.splits,
                                 self.include_shared_concept if self.dataset == "circo" else None)
        metrics = flatten_metrics(result)
        if self.metric not in metrics:
            raise InputError(f"validation metric {self.metric!r} is not among {sorted(metrics)}",
                             field="val-metric")
        return metrics


def train_phi(phi: torch.nn.Module, loss_fn: Callable[[Any], Any], batches: Callable[[int], Any],
              config: PhiTrainingConfig, run: Any, validator: Optional[PhiValidator] = None,
              resume: Optional[str] = None, extra_state: Optional[Mapping[str, Any]] = None) -> Any:
    """Train phi with :func:`irkit.train.loop.train`: AdamW (constant LR), validation every
    ``config.validate_every`` steps, best checkpoint (``best.pt``) by the validator's metric."""
    from irkit.train import loop

    optimizer = torch.optim.AdamW(phi.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return loop.train(
        phi, loss_fn, optimizer, batches, run, config.steps,
        val_fn=validator, val_every=config.validate_every if validator is not None else 0,
        best_metric=validator.metric if validator is not None else None, best_mode="max",
        extra_state=extra_state, resume=resume, seed=config.seed,
        log_every=max(1, min(50, config.validate_every)),
    )


def index_batches(num_items: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """One epoch of shuffled index batches, a function of (seed, epoch) only (exact resume).

    The last partial batch is dropped when there is at least one full batch (as the
    published trainers' ``drop_last=True``); a set smaller than a batch is one batch.
    """
    if num_items <= 0:
        raise InputError("no training items; expected at least one")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_items, generator=generator)
    if num_items < batch_size:
        return [order]
    return [order[i:i + batch_size] for i in range(0, num_items - batch_size + 1, batch_size)]


# --------------------------------------------------------------------------- running any method


def method_options(name: str, checkpoint: Optional[Path | str] = None, include_shared_concept: bool = False,
                   extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Keyword options for ``create_method(name, ...)``, checked against what the method accepts.

    ``checkpoint`` is passed as ``checkpoint=``; ``include_shared_concept`` only when True or
    accepted. An option the method does not take raises :class:`InputError` listing those it does.
    """
    import inspect

    from irkit.methods.base import list_methods, method_class

    if name not in list_methods():
        raise InputError(f"unknown method {name!r}; registered: {', '.join(list_methods())}", field="method")
    accepted = {p for p in inspect.signature(method_class(name).__init__).parameters if p != "self"}
    options: dict[str, Any] = dict(extra or {})
    if checkpoint is not None:
        options["checkpoint"] = checkpoint
    if include_shared_concept or "include_shared_concept" in accepted:
        options["include_shared_concept"] = include_shared_concept
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InputError(f"method {name!r} does not take option(s) {unknown}; it accepts {sorted(accepted) or 'none'}",
                         field="method-option")
    return options


def make_phi_validator(ctx: CIRContext, method: str, dataset: str, root: Path | str, split: str = "val",
                       include_shared_concept: bool = False, metric: Optional[str] = None,
                       **loader_options: Any) -> PhiValidator:
    """A :class:`PhiValidator` scoring method ``method`` (``searle``/``lincir``) with the phi
    being trained, on ``dataset``/``split`` (CIRCO val is scored locally)."""
    from irkit.methods.base import create_method

    splits = load_cir_splits(dataset, root, split, **loader_options)
    return PhiValidator(ctx, splits, lambda phi: create_method(method, phi=phi,
                                                               include_shared_concept=include_shared_concept),
                        include_shared_concept=include_shared_concept, metric=metric)


def open_phi_run(log_dir: Path | str, name: Optional[str], params: Mapping[str, Any], resume: Optional[str] = None) -> Any:
    """The run folder of a phi training: a new ``log_dir/<name>`` (default name from the params),
    or, with ``resume``, the existing one (``resume="latest"`` needs ``name``)."""
    from irkit.runs import RunFolder, default_run_name

    if resume is not None:
        if name is None:
            raise InputError("--resume needs --name (the run folder to continue)", field="resume")
        path = Path(log_dir) / name
        if path.exists():
            return RunFolder.open_existing(path)
    run_name = name or default_run_name(str(params.get("model", "model")), params.get("learning_rate", 0),
                                        params.get("batch_size", 0), method=params.get("method", "phi"))
    return RunFolder.create(log_dir, run_name, params)


def write_method_submission(method: CIRMethod, ctx: CIRContext, splits: Sequence[CIRSplit],
                            out_dir: Path | str) -> list[Path]:
    """Rank test split(s) with ``method`` and write the test-server file(s) into ``out_dir``.

    CIRR: ``<split>_pred_ranks_recall.json`` + ``..._recall_subset.json`` (reference removed);
    CIRCO: ``submission_<split>.json`` (50 int ids per query); FashionIQ (three categories):
    ``fashioniq_<split>.json``. Files are written atomically by :mod:`irkit.eval.submissions`.
    """
    from irkit.eval import submissions

    out_dir = Path(out_dir)
    dataset = splits[0].dataset
    if dataset not in ("cirr", "circo", "fashioniq"):
        raise InputError(f"no test-server format for dataset {dataset!r}; expected cirr, circo or fashioniq")
    if dataset != "fashioniq" and len(splits) != 1:
        raise InputError(f"{dataset} submissions are written for one split, got {len(splits)}")
    ranked = [_submission_rankings(method, ctx, split) for split in splits]
    if dataset == "cirr":
        (split,), ((rankings, subsets),) = splits, ranked
        recall_path, subset_path = submissions.cirr_submission_paths(out_dir, split.split)
        submissions.write_cirr_submission(recall_path, subset_path, split, rankings, subsets)
        return [recall_path, subset_path]
    if dataset == "circo":
        path = out_dir / f"submission_{splits[0].split}.json"
        submissions.write_circo_submission(path, splits[0], ranked[0][0])
        return [path]
    path = out_dir / f"fashioniq_{splits[0].split}.json"
    submissions.write_fashioniq_submission(path, {s.category: s for s in splits},
                                           {s.category: r for s, (r, _) in zip(splits, ranked)})
    return [path]


def _submission_rankings(method: CIRMethod, ctx: CIRContext, split: CIRSplit
                         ) -> tuple[dict[str, list[str]], Optional[dict[str, list[str]]]]:
    """Top-50 rankings (and CIRR's top-3 subset rankings) of ``split`` by ``method``."""
    from irkit.eval import protocols

    if is_ranking_method(method):
        return method.rank_split(ctx, split)
    query_embeddings, gallery_embeddings = method.query_embeddings(ctx, split), method.gallery_embeddings(ctx, split)
    if split.dataset == "cirr":
        return protocols.rank_cirr(split, query_embeddings, gallery_embeddings, k=50, subset_k=3)
    return protocols.rank_split(split, query_embeddings, gallery_embeddings, 50), None


# --------------------------------------------------------------------------- notebook helpers


#: A file that marks a folder as the root of each benchmark (published layouts).
_ANNOTATION_MARKERS = {"cirr": "cirr/captions", "circo": "annotations", "fashioniq": "captions"}
#: Demo caption CSV (under ``<data_root>/captions/``) used to train LinCIR's phi per benchmark
#: (CIRCO uses CIRR's training captions: its own caption file describes the evaluation gallery).
DEMO_LINCIR_CAPTIONS = {"cirr": "cirr_train.csv", "circo": "cirr_train.csv", "fashioniq": "fashioniq_train.csv"}


def cir_dataset_root(data_root: Path | str, dataset: str) -> Path:
    """``<data_root>/<dataset>`` (a demo root) when it exists, else ``data_root`` itself."""
    data_root = Path(data_root)
    return data_root / dataset if (data_root / dataset).is_dir() else data_root


def ensure_cir_demo(data_root: Path | str, dataset: str, scale: str = "tiny",
                    seed: int = 0) -> tuple[Path, Optional[Path]]:
    """``(dataset root, LinCIR caption file or None)``; generates the demo data (the dataset
    and, for CIRCO, CIRR's training captions) unless ``data_root`` already holds the dataset."""
    if dataset not in _ANNOTATION_MARKERS:
        raise InputError(f"unknown CIR dataset {dataset!r}; expected one of {sorted(_ANNOTATION_MARKERS)}",
                         field="dataset")
    data_root = Path(data_root)
    root = cir_dataset_root(data_root, dataset)
    if not (root / _ANNOTATION_MARKERS[dataset]).is_dir():
        from irkit.data.demo import generate_demo

        needed = [dataset] + (["cirr"] if dataset == "circo" else [])
        generate_demo(data_root, seed=seed, scale=scale,
                      datasets=[d for d in needed if not (data_root / d).is_dir()], progress=False)
        root = data_root / dataset
    captions = data_root / "captions" / DEMO_LINCIR_CAPTIONS[dataset]
    return root, captions if captions.is_file() else None


@dataclass
class CIRReview:
    """One evaluated method on one benchmark split: metrics plus the top rankings to show."""

    method: str
    splits: list[CIRSplit]
    rankings: list[dict[str, list[str]]]  # per split: query id -> top gallery ids (protocol applied)
    metrics: dict[str, Any]
    phi_run: Optional[Path] = None


def review_cir_method(ctx: CIRContext, dataset: str, root: Path | str, method: str, split: str = "val",
                      method_checkpoint: Optional[Path | str] = None, include_shared_concept: bool = False,
                      run_dir: Optional[Path | str] = None, lincir_captions: Optional[Path | str] = None,
                      lincir_steps: int = 0, top_k: int = 10, **loader_options: Any) -> CIRReview:
    """Evaluate ``method`` on ``dataset``/``split``; write ``metrics.json`` into ``run_dir``.

    For ``lincir`` without ``method_checkpoint`` and with ``lincir_captions`` and
    ``lincir_steps > 0``, phi is first trained from those captions (text only) into
    ``run_dir/phi`` (validated on this split, best checkpoint used).
    """
    from irkit.eval import protocols
    from irkit.io import atomic_write_json
    from irkit.methods.base import create_method

    splits = load_cir_splits(dataset, root, split, **loader_options)
    phi_run = None
    if method == "lincir" and method_checkpoint is None and lincir_captions is not None and lincir_steps > 0:
        from irkit.methods.lincir import read_captions, train_phi_lincir
        from irkit.runs import RunFolder

        if run_dir is None:
            raise InputError("training phi needs a run_dir to keep its run folder", field="run_dir")
        config = PhiTrainingConfig(steps=lincir_steps, batch_size=64, validate_every=max(1, lincir_steps // 5))
        validator = make_phi_validator(ctx, "lincir", dataset, root, split, include_shared_concept, **loader_options)
        run = RunFolder.create(run_dir, "phi", {"method": "lincir", "captions": lincir_captions, **config.to_params()})
        try:
            result = train_phi_lincir(ctx.loaded, read_captions(lincir_captions), run, config, validator)
        finally:
            run.close()
        method_checkpoint, phi_run = result.best_checkpoint, run.path
    instance = create_method(method, **method_options(method, method_checkpoint, include_shared_concept))
    if is_ranking_method(instance):
        metrics = evaluate_method(instance, ctx, splits, include_shared_concept)
        rankings = [{q: ids[:top_k] for q, ids in instance.rank_split(ctx, s)[0].items()} for s in splits]
    else:
        embeddings = embed_splits(instance, ctx, splits)
        metrics = score_embeddings(splits, embeddings, include_shared_concept)
        metrics["method"] = method
        rankings = [protocols.rank_split(s, q, g, top_k) for s, (q, g) in zip(splits, embeddings)]
    if run_dir is not None:
        atomic_write_json(Path(run_dir) / "metrics.json", metrics, indent=2)
    return CIRReview(method, list(splits), rankings, metrics, phi_run)


def review_grid(review: CIRReview, num_queries: int = 4, k: int = 5, split_index: int = 0):
    """Figure: reference image + modification text, then the top-``k`` retrieved images
    (green = relevant, red = not), for ``num_queries`` queries spread over the split."""
    from irkit.viz import retrieval_grid

    split, rankings = review.splits[split_index], review.rankings[split_index]
    step = max(1, len(split.queries) // max(1, num_queries))
    picked = split.queries[::step][:num_queries]
    return retrieval_grid(
        [" / ".join(q.captions) for q in picked],
        [[split.image_path(i) for i in rankings[q.query_id][:k]] for q in picked],
        relevant=[{split.image_path(i) for i in (q.ground_truths or ((q.target,) if q.target else ()))}
                  for q in picked],
        query_images=[split.image_path(q.reference) for q in picked],
        k=k,
    )
