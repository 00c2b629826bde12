"""Shared parts of the textual-inversion methods (SEARLE, SEARLE-OTI, LinCIR).

* concept vocabulary and regularisation phrases (plain text files, docs/methods.md §B);
* losses: cosine distance, the symmetric contrastive (NT-Xent) distillation loss, the
  phrase regulariser;
* the inference prompt ``a photo of $ that {caption}`` (the captions each benchmark puts in it:
  :meth:`irkit.benchmarks.Benchmark.prompt_captions`);
* :class:`PseudoTokenMethod` / :class:`PhiMethod`, the embedding-method bases whose query is
  the prompt encoded with one pseudo token per reference image;
* :func:`new_phi`, a seeded phi network (trained with :mod:`irkit.cir.training`).

Shapes: d = joint embedding width, w = token embedding width, B = batch.
"""

from __future__ import annotations

import abc
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from irkit.benchmarks import get_benchmark
from irkit.cir.context import CIRContext, encode_token_ids, l2_normalize
from irkit.cir.registry import EmbeddingMethod
from irkit.cir.training import TrainingConfig
from irkit.data.records import CIRQuery, CIRSplit
from irkit.errors import InputError
from irkit.io import atomic_write_text, file_sha256, stable_hash
from irkit.models.factory import warn_truncated
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


@dataclass
class EncodedPhrases:
    """A phrase bank tokenised and encoded once: targets of the phrase regulariser."""

    bank: PhraseBank
    masked_ids: torch.Tensor        # [P, L] token ids of the masked phrases (one $ each)
    embeddings: torch.Tensor        # [P, d] unnormalised text features of the phrases
    concept_embeddings: torch.Tensor  # [C, d] L2-normalised mean of each concept's phrase features

    @classmethod
    def encode(cls, model: torch.nn.Module, tokenizer: Any, bank: PhraseBank, batch_size: int = 256,
               precision: str = "fp32") -> "EncodedPhrases":
        """Tokenise the bank and encode its phrases (under ``precision``'s autocast)."""
        masked_ids = tokenize_prompts(tokenizer, [p.masked for p in bank.phrases])
        embeddings = encode_token_ids(model, tokenizer([p.text for p in bank.phrases]), batch_size, precision)
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
    """The prompt(s) of one query: ``template`` filled with each caption the benchmark gives
    (:meth:`irkit.benchmarks.Benchmark.prompt_captions`, texts cleaned by :func:`clean_caption`);
    several prompts are averaged (normalised) into one query."""
    captions = get_benchmark(dataset).prompt_captions(query, include_shared_concept, clean=clean_caption)
    return [template.format(caption=caption) for caption in captions]


def unique_references(split: CIRSplit) -> list[str]:
    """Reference image ids of the split's queries, first-appearance order, no duplicates."""
    return list(dict.fromkeys(q.reference for q in split.queries))


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
    warn_truncated(tokenizer, prompts, f"model '{loaded.model_name}'")  # once, with the count
    features = np.zeros((len(prompts), loaded.embed_dim), dtype=np.float32)
    starts = range(0, len(prompts), batch_size)
    with torch.no_grad(), loaded.autocast():
        for start in tqdm(starts, desc="queries", unit="batch", disable=not progress or len(starts) < 4):
            chunk = prompts[start:start + batch_size]
            ids = tokenize_prompts(tokenizer, chunk)
            pseudo = reference_tokens[rows[start:start + len(chunk)]]
            encoded = encode_with_pseudo_tokens(model, ids, pseudo, placeholder_id, mode)
            features[start:start + len(chunk)] = F.normalize(encoded.float(), dim=-1).cpu().numpy()
    summed = np.zeros((len(split.queries), features.shape[1]), dtype=np.float32)
    np.add.at(summed, np.asarray(owners, dtype=np.int64), features)
    return l2_normalize(summed)


class PseudoTokenMethod(EmbeddingMethod):
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
        self._phi_from_file = phi is None
        self._checkpoint_sha256: Optional[str] = None

    def _phi(self, loaded: Any) -> torch.nn.Module:
        from irkit.models.phi import Phi
        from irkit.models.pseudo_token import embed_dim, token_width

        if self.phi is None:
            self.phi = Phi.from_checkpoint(self.checkpoint, embed_dim(loaded.model), token_width(loaded.model))
        return self.phi

    def cache_identity(self) -> Optional[dict[str, Any]]:
        """A phi read from a checkpoint file: that file's content, the options and the prompt
        (an in-memory phi, e.g. one being trained, is never cached)."""
        if self.checkpoint is None or self._phi_from_file is False:
            return None
        if self._checkpoint_sha256 is None:
            self._checkpoint_sha256 = file_sha256(self.checkpoint)
        return {"phi_checkpoint_sha256": self._checkpoint_sha256, "mode": self.mode, "prompt": PROMPT_TEMPLATE,
                "include_shared_concept": self.include_shared_concept}

    def reference_tokens(self, ctx: CIRContext, split: CIRSplit, reference_ids: Sequence[str]) -> torch.Tensor:
        phi = self._phi(ctx.loaded)
        features = torch.from_numpy(ctx.raw_image_embeddings(split, reference_ids))
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


# --------------------------------------------------------------------------- phi


def new_phi(input_dim: int, output_dim: int, config: TrainingConfig, device: Any = "cpu") -> torch.nn.Module:
    """A freshly initialised :class:`~irkit.models.phi.Phi`, its weights a function of ``config.seed``."""
    from irkit.models.phi import Phi

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return Phi(input_dim, output_dim, dropout=config.dropout).to(device)
