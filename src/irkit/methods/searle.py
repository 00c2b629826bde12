"""SEARLE (miccunifi/SEARLE, docs/methods.md §B): OTI, phi distillation, and the two CIR methods.

* :func:`run_oti` — Optimisation-based Textual Inversion: one pseudo token per image,
  optimised so that ``E(template with $)`` matches the image embedding, regularised by
  phrases of the image's nearest concepts with the concept replaced by ``$``.
  Defaults as published: token ~ N(0, 0.02), AdamW lr 2e-2 / wd 0.01, 350 steps, EMA 0.99
  (the EMA token is kept), loss = (L_cos + 0.5 L_reg) / 1.5, top-15 concepts per image.
  Published OTI folders (``ema_oti_pseudo_tokens.pt`` + ``image_names.pkl``) load with
  :func:`load_published_oti_folder` (no arbitrary unpickling).
  Batched over images, saved after every batch, resumable (a re-run skips done batches).
* :func:`train_phi_searle` — phi distilled from OTI tokens:
  loss = L_distil + 0.75 L_reg, L_distil the symmetric contrastive loss at temperature 0.25,
  phrases from each image's top-150 concepts.
* methods ``searle`` (phi-predicted tokens) and ``searle-oti`` (OTI tokens of the references).

The published phrases came from GPT-Neo-2.7B prompted with Open Images concepts; irkit's
default phrases are built offline from ``resources/phrase_templates.txt`` over
``resources/concepts.txt`` (any ``concept<TAB>phrase`` file can replace them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import pickle
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from irkit import distributed
from irkit.cir.context import CIRContext, frozen, model_device, raw_image_embeddings
from irkit.cir.registry import register_method
from irkit.cir.training import TrainingConfig, Validator, train_with_validation
from irkit.data.records import CIRSplit
from irkit.errors import InputError
from irkit.io import atomic_path, atomic_write_json, stable_hash
from irkit.methods.textual_inversion import (
    EncodedPhrases,
    PhiMethod,
    PhraseBank,
    PseudoTokenMethod,
    cosine_distance_loss,
    load_phrase_bank,
    new_phi,
    phrase_regulariser,
    symmetric_contrastive_loss,
    unique_references,
)
from irkit.models.pseudo_token import (
    embed_dim,
    encode_with_pseudo_tokens,
    placeholder_token_id,
    token_width,
    tokenize_prompts,
)
from irkit.precision import Precision, resolve_training_precision
from irkit.train.loop import index_batches

#: Nearest concepts an image's regularisation phrase is drawn from: OTI (published 15) and
#: phi distillation (published 150, SEARLE's train_phi.py).
OTI_TOP_K_CONCEPTS = 15
PHI_TOP_K_CONCEPTS = 150

OTI_FILE = "oti_tokens.safetensors"
#: Files of a published SEARLE OTI experiment folder (its oti_inversion.py).
PUBLISHED_OTI_TOKENS = "ema_oti_pseudo_tokens.pt"
PUBLISHED_OTI_LAST_TOKENS = "oti_pseudo_tokens.pt"
PUBLISHED_OTI_NAMES = "image_names.pkl"
PUBLISHED_OTI_FORMAT = "searle-published-oti"
OTI_IDS_FILE = "oti_ids.json"

#: Sentences the OTI token is optimised in (``$`` = the image's pseudo word). irkit's own
#: list in the spirit of the published PALAVRA templates.
OTI_TEMPLATES: tuple[str, ...] = (
    "a photo of $", "a picture of $", "an image of $", "a photo of a $", "this is a photo of $",
    "this photo contains $", "this picture shows $", "a close-up photo of $", "a cropped photo of $",
    "a blurry photo of $", "a bright photo of $", "a dark photo of $", "a good photo of $",
    "we see $ in this photo", "we see $ in this image", "there is $ in the picture", "$",
    "$ photo", "$ image", "a snapshot of $", "a camera picture of $", "an example of $",
)


@dataclass(frozen=True)
class OTIConfig:
    """OTI hyper-parameters (published defaults)."""

    steps: int = 350
    learning_rate: float = 2e-2
    weight_decay: float = 0.01
    ema_decay: float = 0.99
    init_std: float = 0.02
    lambda_cos: float = 1.0
    lambda_reg: float = 0.5
    top_k_concepts: int = OTI_TOP_K_CONCEPTS
    batch_size: int = 32
    seed: int = 0


@dataclass
class OTITokens:
    """OTI results per image id: EMA tokens (used), last tokens, and the unnormalised image
    embeddings they were fitted to (phi distillation's input)."""

    ids: list[str]
    tokens: torch.Tensor          # [N, w] EMA pseudo tokens
    last_tokens: torch.Tensor     # [N, w] final (non-EMA) pseudo tokens
    image_features: torch.Tensor  # [N, d] unnormalised image embeddings
    params: dict[str, Any]

    def lookup(self, image_ids: Sequence[str]) -> torch.Tensor:
        """[R, w] EMA tokens of ``image_ids``; InputError naming a missing id."""
        row = {image_id: i for i, image_id in enumerate(self.ids)}
        missing = [i for i in image_ids if i not in row]
        if missing:
            raise InputError(f"no OTI token for image {missing[0]!r} ({len(missing)} of {len(image_ids)} missing); "
                             "expected `irkit cir oti` to have been run on these images")
        return self.tokens[[row[i] for i in image_ids]]

    def merged(self, ids: Sequence[str], tokens: torch.Tensor, last_tokens: torch.Tensor,
               image_features: torch.Tensor) -> "OTITokens":
        """A copy with rows for ``ids`` added (or replaced)."""
        keep = [i for i, image_id in enumerate(self.ids) if image_id not in set(ids)]
        return OTITokens(
            [self.ids[i] for i in keep] + list(ids),
            torch.cat([self.tokens[keep], tokens]), torch.cat([self.last_tokens[keep], last_tokens]),
            torch.cat([self.image_features[keep], image_features]), dict(self.params))

    def save(self, folder: Path | str) -> Path:
        """Atomically write ``oti_tokens.safetensors`` (ids and params in its metadata) and
        ``oti_ids.json`` (a readable copy of the ids and params)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        path = folder / OTI_FILE
        tensors = {"tokens": self.tokens.float().contiguous(), "last_tokens": self.last_tokens.float().contiguous(),
                   "image_features": self.image_features.float().contiguous()}
        metadata = {"ids": json.dumps(self.ids), "params": json.dumps(self.params, sort_keys=True),
                    "format": "irkit-oti-1"}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        atomic_write_json(folder / OTI_IDS_FILE, {"ids": self.ids, "params": self.params}, indent=1)
        return path

    @classmethod
    def load(cls, path: Path | str) -> "OTITokens":
        """Read an OTI folder (or its ``oti_tokens.safetensors``), or a published SEARLE OTI
        folder (``ema_oti_pseudo_tokens.pt`` + ``image_names.pkl``, :func:`load_published_oti_folder`)."""
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir() and not (path / OTI_FILE).is_file() and (path / PUBLISHED_OTI_TOKENS).is_file():
            return load_published_oti_folder(path)
        file = path / OTI_FILE if path.is_dir() else path
        if not file.is_file():
            raise InputError(f"no OTI tokens found; expected {OTI_FILE} written by `irkit cir oti`", path=file)
        try:
            with safe_open(str(file), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            ids = json.loads(metadata["ids"])
            params = json.loads(metadata["params"])
        except Exception as e:  # noqa: BLE001 - any unreadable or foreign file
            raise InputError(f"not a readable irkit OTI file ({type(e).__name__}: {e})", path=file) from None
        missing = {"tokens", "last_tokens", "image_features"} - set(tensors)
        if missing or len(ids) != tensors.get("tokens", torch.zeros(0)).shape[0]:
            raise InputError(f"OTI file is inconsistent (missing tensors {sorted(missing)} or id count "
                             f"{len(ids)} != token rows)", path=file)
        return cls(ids, tensors["tokens"], tensors["last_tokens"], tensors["image_features"], params)


class _NamesOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any global (class, function) is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def read_image_names_pickle(path: Path | str) -> list[str]:
    """A published ``image_names.pkl`` (``pickle.dump`` of a list of str) -> the names.

    Read by an unpickler that refuses every global, so no code in the file can run; anything
    but a list of str is an :class:`InputError` naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            names = _NamesOnlyUnpickler(handle).load()
    except OSError as e:
        raise InputError(f"cannot read image names ({e.strerror})", path=path) from None
    except Exception as e:  # noqa: BLE001 - a refused global or a corrupt pickle: nothing of it ran
        raise InputError(f"not a plain pickled list of image names ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); expected pickle.dump of a list of str",
                         path=path) from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        found = type(names).__name__ if not isinstance(names, list) else \
            f"a list holding a {type(next(n for n in names if not isinstance(n, str))).__name__}"
        raise InputError(f"expected a pickled list of str (image names), found {found}", path=path)
    return names


def load_published_oti_folder(folder: Path | str) -> OTITokens:
    """A published SEARLE OTI experiment folder -> :class:`OTITokens` (docs/formats.md §8).

    ``ema_oti_pseudo_tokens.pt`` (``torch.save`` of the [N, w] EMA tokens, loaded with
    ``weights_only=True``), ``image_names.pkl`` (the N image names, :func:`read_image_names_pickle`),
    optional ``oti_pseudo_tokens.pt`` (last tokens) and ``hyperparameters.json`` (kept in
    ``params``). The published folder has no image embeddings: ``image_features`` is [N, 0],
    enough for the ``searle-oti`` method but not for phi distillation.
    """
    from irkit.runs import load_checkpoint

    folder = Path(folder)
    tokens_file, names_file = folder / PUBLISHED_OTI_TOKENS, folder / PUBLISHED_OTI_NAMES
    for required in (tokens_file, names_file):
        if not required.is_file():
            raise InputError(f"a published SEARLE OTI folder holds {PUBLISHED_OTI_TOKENS} and {PUBLISHED_OTI_NAMES}; "
                             f"{required.name} is missing", path=folder)
    names = read_image_names_pickle(names_file)
    tokens = _published_token_tensor(load_checkpoint(tokens_file), tokens_file, len(names))
    last_file = folder / PUBLISHED_OTI_LAST_TOKENS
    last = _published_token_tensor(load_checkpoint(last_file), last_file, len(names)) if last_file.is_file() else tokens
    if last.shape != tokens.shape:
        raise InputError(f"last tokens {tuple(last.shape)} differ from the EMA tokens {tuple(tokens.shape)}",
                         path=last_file)
    if len(set(names)) != len(names):
        raise InputError("image names repeat; expected one token per image", path=names_file)
    params: dict[str, Any] = {"format": PUBLISHED_OTI_FORMAT}
    hyper_file = folder / "hyperparameters.json"
    if hyper_file.is_file():
        try:
            params["hyperparameters"] = json.loads(hyper_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"not JSON ({e})", path=hyper_file) from None
    return OTITokens(names, tokens, last, torch.zeros(len(names), 0), params)


def _published_token_tensor(value: Any, path: Path, rows: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or not value.is_floating_point():
        shown = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InputError(f"expected a 2-D float tensor of pseudo tokens [N, w], found {shown}", path=path)
    if value.shape[0] != rows:
        raise InputError(f"{value.shape[0]} token rows but {rows} image names in {PUBLISHED_OTI_NAMES}", path=path)
    return value.float()


def oti_params(loaded: Any, config: OTIConfig, bank: PhraseBank, templates: Sequence[str]) -> dict[str, Any]:
    """Everything that determines OTI tokens (besides the images): the store's key, the backbone's
    resolved precision included (OTI runs under its autocast)."""
    return {"method": "searle-oti", **asdict(config), "model_name": loaded.model_name,
            "weights_id": loaded.weights_id, "precision": loaded.precision,
            "subnormals": loaded.subnormals, "phrases": bank.fingerprint(),
            "templates": stable_hash(list(templates))}


def _differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    return [f"{k}: saved {saved.get(k)!r}, now {wanted.get(k)!r}"
            for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]


def run_oti(loaded: Any, image_ids: Sequence[str], image_features: np.ndarray | torch.Tensor,
            out_dir: Path | str, config: OTIConfig = OTIConfig(), phrases: Optional[PhraseBank] = None,
            templates: Sequence[str] = OTI_TEMPLATES, progress: bool = True) -> OTITokens:
    """OTI pseudo tokens for ``image_ids`` (unnormalised ``image_features`` [N, d]).

    Images are processed in batches of ``config.batch_size`` (in the given order); after each
    batch the results are saved atomically to ``out_dir/oti_tokens.safetensors``. Re-running
    with the same settings skips the batches already saved; different settings raise
    :class:`InputError` (a store is never mixed). Each batch's randomness comes from
    ``(seed, batch index)``, so an interrupted and resumed run equals an uninterrupted one.
    """
    image_ids = [str(i) for i in image_ids]
    if len(set(image_ids)) != len(image_ids):
        raise InputError("OTI image ids must be unique")
    features = torch.as_tensor(np.asarray(image_features), dtype=torch.float32)
    if features.shape[0] != len(image_ids):
        raise InputError(f"{len(image_ids)} image ids but {features.shape[0]} feature rows")
    if config.steps < 0 or config.batch_size <= 0:
        raise InputError(f"OTI needs steps >= 0 and batch_size > 0, got {config.steps} and {config.batch_size}")
    model, tokenizer = loaded.model, loaded.tokenizer
    bank = phrases if phrases is not None else load_phrase_bank()
    params = oti_params(loaded, config, bank, templates)
    out_dir = Path(out_dir)
    width = token_width(model)
    if (out_dir / OTI_FILE).is_file():
        store = OTITokens.load(out_dir)
        # stores from before these were recorded ran in fp32 with IEEE subnormals
        diffs = _differences({"precision": "fp32", "subnormals": "kept", **store.params}, params)
        if diffs:
            raise InputError("existing OTI tokens were computed with other settings (" + "; ".join(diffs)
                             + "); choose another output folder", path=out_dir / OTI_FILE)
    else:
        store = OTITokens([], torch.zeros(0, width), torch.zeros(0, width), torch.zeros(0, features.shape[1]), params)

    device = model_device(model)
    placeholder_id = placeholder_token_id(tokenizer)
    template_ids = tokenize_prompts(tokenizer, list(templates))
    forward = resolve_training_precision(loaded.precision, device)  # tokens and optimizer state stay float32
    with frozen(model):
        encoded = EncodedPhrases.encode(model, tokenizer, bank, precision=loaded.precision)
        nearest_concepts = encoded.top_concepts(features, config.top_k_concepts)
        done = set(store.ids)
        starts = list(range(0, len(image_ids), config.batch_size))
        bar = tqdm(total=len(image_ids), desc="OTI", unit="img", disable=not progress)
        for batch_index, start in enumerate(starts):
            batch_ids = image_ids[start:start + config.batch_size]
            if all(i in done for i in batch_ids):
                bar.update(len(batch_ids))
                continue
            rows = torch.arange(start, start + len(batch_ids))
            ema, last = _invert_batch(model, placeholder_id, template_ids, encoded, features[rows].to(device),
                                      nearest_concepts[rows], config, batch_index, precision=forward)
            store = store.merged(batch_ids, ema, last, features[rows])
            store.save(out_dir)
            done.update(batch_ids)
            bar.update(len(batch_ids))
        bar.close()
    if not (out_dir / OTI_FILE).is_file():  # no images at all: still leave a valid (empty) store
        store.save(out_dir)
    return store


def _invert_batch(model: torch.nn.Module, placeholder_id: int, template_ids: torch.Tensor, encoded: EncodedPhrases,
                  image_features: torch.Tensor, nearest_concepts: torch.Tensor, config: OTIConfig,
                  batch_index: int, precision: Optional[Precision] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise B pseudo tokens [B, w] for B images (forward passes and loss under ``precision``'s
    autocast; float32 tokens); returns (EMA tokens, last tokens) on CPU."""
    forward = precision.autocast if precision is not None else contextlib.nullcontext
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + batch_index)
    batch = image_features.shape[0]
    device = image_features.device
    init = torch.randn(batch, token_width(model), generator=generator) * config.init_std
    tokens = torch.nn.Parameter(init.to(device))
    ema = tokens.detach().clone()
    optimizer = torch.optim.AdamW([tokens], lr=config.learning_rate, weight_decay=config.weight_decay)
    total_weight = config.lambda_cos + config.lambda_reg
    for _ in range(config.steps):
        template_rows = torch.randint(template_ids.shape[0], (batch,), generator=generator)
        phrase_rows = encoded.sample(nearest_concepts, generator)
        with forward():
            template_features = encode_with_pseudo_tokens(model, template_ids[template_rows], tokens, placeholder_id,
                                                          "first")
            loss_cos = cosine_distance_loss(template_features, image_features)
            loss_reg = phrase_regulariser(model, placeholder_id, tokens, encoded, phrase_rows)
            loss = (config.lambda_cos * loss_cos + config.lambda_reg * loss_reg) / total_weight
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema = config.ema_decay * ema + (1.0 - config.ema_decay) * tokens.detach()
    return ema.float().cpu(), tokens.detach().float().cpu()


def images_of_splits(splits: Sequence[CIRSplit], which: str = "references") -> tuple[list[str], list[Path]]:
    """Unique image ids and paths over ``splits``: ``references``, ``gallery`` or ``all``."""
    if which not in ("references", "gallery", "all"):
        raise InputError(f"images must be 'references', 'gallery' or 'all', got {which!r}", field="images")
    paths: dict[str, Path] = {}
    for split in splits:
        ids = (unique_references(split) if which in ("references", "all") else []) + \
              (list(split.gallery) if which in ("gallery", "all") else [])
        for image_id in ids:
            paths.setdefault(image_id, split.image_path(image_id))
    return list(paths), list(paths.values())


def oti_for_splits(ctx: CIRContext, splits: Sequence[CIRSplit], out_dir: Path | str, which: str = "references",
                   config: OTIConfig = OTIConfig(), phrases: Optional[PhraseBank] = None,
                   progress: bool = True) -> OTITokens:
    """OTI tokens for the reference (or gallery, or all) images of CIR split(s)."""
    ids, paths = images_of_splits(splits, which)
    features = raw_image_embeddings(ctx.loaded, paths, ctx.batch_size, ctx.num_workers, ctx.cache_dir, ctx.reader)
    return run_oti(ctx.loaded, ids, features, out_dir, config, phrases, progress=progress)


# --------------------------------------------------------------------------- phi distillation


def train_phi_searle(loaded: Any, oti: OTITokens, run: Any, config: TrainingConfig = TrainingConfig(batch_size=256),
                     phrases: Optional[PhraseBank] = None, validator: Optional[Validator] = None,
                     resume: Optional[str] = None, temperature: float = 0.25, lambda_distil: float = 1.0,
                     lambda_reg: float = 0.75, top_k_concepts: int = PHI_TOP_K_CONCEPTS) -> Any:
    """Distil phi from OTI tokens (SEARLE): phi(f) ~ OTI token of f, plus the phrase regulariser.

    loss = lambda_distil * NT-Xent(OTI tokens, phi(f); T) + lambda_reg * L_reg, where L_reg
    puts phi(f) into a phrase of one of f's ``top_k_concepts`` nearest concepts (published:
    150 for phi training, while OTI uses 15). Runs in
    ``run`` (a :class:`irkit.runs.RunFolder`) via :func:`irkit.train.loop.train`; returns its
    ``TrainResult`` (``best_checkpoint`` = best validation score).
    """
    if oti.params.get("format") == PUBLISHED_OTI_FORMAT:
        raise InputError("a published SEARLE OTI folder holds no image embeddings, which phi distillation needs; "
                         "run `irkit cir oti` on the training images (or use the folder with method searle-oti)")
    model, tokenizer = loaded.model, loaded.tokenizer
    if not oti.ids:
        raise InputError("the OTI store holds no tokens; run `irkit cir oti` first")
    d, w = embed_dim(model), token_width(model)
    if oti.tokens.shape[1] != w or oti.image_features.shape[1] != d:
        raise InputError(f"OTI tokens are {tuple(oti.tokens.shape)} / features {tuple(oti.image_features.shape)}; "
                         f"expected width w={w} and d={d} for model {loaded.model_name}")
    if oti.params.get("weights_id") != loaded.weights_id:
        raise InputError(f"OTI tokens were computed with weights {oti.params.get('weights_id')!r}, "
                         f"but the model has {loaded.weights_id!r}; expected the same backbone")
    bank = phrases if phrases is not None else load_phrase_bank()
    device = model_device(model)
    placeholder_id = placeholder_token_id(tokenizer)
    phi = new_phi(d, w, config, device)
    features, targets = oti.image_features.float(), oti.tokens.float()

    with frozen(model):
        encoded = EncodedPhrases.encode(model, tokenizer, bank, precision=loaded.precision)
        nearest_concepts = encoded.top_concepts(features, top_k_concepts)

        def loss_fn(rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
            # Several processes: phi, its dropout, the phrase draws and the in-batch distillation
            # loss cover the whole global batch on every rank (cheap); the text-encoder
            # regulariser runs on this rank's rows only, scaled to its share of the batch mean.
            local = distributed.local_rows(len(rows))
            predicted = phi(features[rows].to(device))
            loss_distil = symmetric_contrastive_loss(targets[rows].to(device), predicted, temperature)
            phrase_rows = encoded.sample(nearest_concepts[rows])
            loss_reg = phrase_regulariser(model, placeholder_id, predicted[local], encoded, phrase_rows[local])
            loss = lambda_distil * loss_distil + lambda_reg * loss_reg * distributed.local_share(len(rows))
            return loss, {"loss_distil": float(loss_distil.detach()), "loss_reg": float(loss_reg.detach())}

        extra = {"method": "searle", "model_name": loaded.model_name, "weights_id": loaded.weights_id,
                 "input_dim": d, "output_dim": w, "oti_images": len(oti.ids), "temperature": temperature,
                 "lambda_distil": lambda_distil, "lambda_reg": lambda_reg, "top_k_concepts": top_k_concepts}
        return train_with_validation(phi, loss_fn, lambda epoch: index_batches(len(oti.ids), config.batch_size, config.seed, epoch),
                                     run, config, validator, resume=resume, extra_state=extra)


# --------------------------------------------------------------------------- methods


@register_method("searle")
class Searle(PhiMethod):
    """SEARLE: ``a photo of $ that {caption}``, ``$`` := phi(reference image embedding), first ``$``.

    Options: ``checkpoint`` (phi checkpoint: published ``{"Phi": ...}`` or irkit's),
    ``include_shared_concept`` (CIRCO).
    """

    mode = "first"


@register_method("searle-oti")
class SearleOTI(PseudoTokenMethod):
    """SEARLE-OTI: ``$`` := the OTI token of the reference image (first ``$``).

    Options: ``checkpoint`` — an OTI folder/file from ``irkit cir oti``, or a published SEARLE
    OTI folder (``ema_oti_pseudo_tokens.pt`` + ``image_names.pkl``), covering the split's
    reference images. Without it, OTI runs here on the references (``steps``, ``batch_size``,
    ``seed``; published defaults) and is stored under ``<cache_dir>/oti/<key>`` (resumable).
    """

    mode = "first"

    def __init__(self, checkpoint: Optional[Path | str] = None, include_shared_concept: bool = False,
                 steps: int = 350, batch_size: int = 32, seed: int = 0, phrases: Optional[Path | str] = None) -> None:
        super().__init__(include_shared_concept)
        self.checkpoint = checkpoint
        self.config = OTIConfig(steps=int(steps), batch_size=int(batch_size), seed=int(seed))
        self.phrases = phrases

    def reference_tokens(self, ctx: CIRContext, split: CIRSplit, reference_ids: Sequence[str]) -> torch.Tensor:
        if self.checkpoint is not None:
            tokens = OTITokens.load(self.checkpoint).lookup(reference_ids)
            width = token_width(ctx.loaded.model)
            if tokens.shape[1] != width:
                raise InputError(f"OTI tokens are {tokens.shape[1]} wide; model {ctx.loaded.model_name} has token "
                                 f"width {width} (tokens are only valid for the backbone they were fitted with)",
                                 path=self.checkpoint)
            return tokens
        bank = load_phrase_bank(self.phrases)
        features = ctx.raw_image_embeddings(split, reference_ids)
        key = stable_hash({"params": oti_params(ctx.loaded, self.config, bank, OTI_TEMPLATES),
                           "ids": list(reference_ids),
                           "features": hashlib.sha256(np.ascontiguousarray(features).tobytes()).hexdigest()})
        if ctx.cache_dir is not None:
            tokens = run_oti(ctx.loaded, reference_ids, features, Path(ctx.cache_dir) / "oti" / key[:16],
                             self.config, bank)
        else:
            with tempfile.TemporaryDirectory(prefix="irkit-oti-") as tmp:
                tokens = run_oti(ctx.loaded, reference_ids, features, tmp, self.config, bank)
        return tokens.lookup(reference_ids)
