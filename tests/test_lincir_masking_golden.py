"""LinCIR masking, published mode: identical masked token ids to the published data pipeline
(navervision/lincir ``CaptionDataset``) on every CIRR val and FashionIQ val caption.

The golden (tests/goldens/lincir/, see tests/goldens/README.md) holds, per caption, the masked
token ids the published code produced (trimmed after EOT), whether its random fallback ran
(with ``random.seed(index)`` before each caption) and a hash of the caption it read.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import pytest

from irkit.methods.lincir import (clean_published_caption, keyword_texts, load_spacy, mask_published,
                                  tokenize_published)

GOLDEN = Path(__file__).parent / "goldens" / "lincir" / "lincir_masking_val.json.gz"
EOT = 49407


def _captions(root: Path) -> dict[str, list[str]]:
    parts = {"cirr_val": [e["caption"] for e in json.loads((root / "cirr/cirr/captions/cap.rc2.val.json").read_text())]}
    for category in ("dress", "shirt", "toptee"):
        entries = json.loads((root / f"fashioniq/captions/cap.{category}.val.json").read_text())
        parts[f"fashioniq_{category}_val"] = [c for e in entries for c in e["captions"]]
    return parts


def test_published_masking_matches_the_published_pipeline_on_every_val_caption(real_benchmarks):
    import open_clip

    golden = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    captions = _captions(real_benchmarks)
    assert sorted(captions) == sorted(golden["parts"])
    nlp = load_spacy()
    tokenizer = open_clip.get_tokenizer("ViT-L-14")  # OpenAI CLIP BPE, as LinCIR's CLIP tokenizer
    total, mismatches, fallbacks = 0, [], 0
    for part, texts in captions.items():
        rows = golden["parts"][part]
        assert len(rows) == len(texts), part
        cleaned = [clean_published_caption(t) for t in texts]
        masked = []
        for index, (text, doc) in enumerate(zip(cleaned, nlp.pipe(cleaned, batch_size=256))):
            masked.append(mask_published(text, keyword_texts(doc), random.Random(index)))
        ids = tokenize_published(tokenizer, masked).tolist()
        for index, (row, text, mine) in enumerate(zip(rows, texts, ids)):
            assert hashlib.sha256(text.encode()).hexdigest()[:16] == row["caption_sha256"], (part, index)
            mine = mine[:mine.index(EOT) + 1]
            total += 1
            fallbacks += row["random_fallback"]
            if mine != row["masked_ids"]:
                mismatches.append((part, index, text, masked[index]))
    assert total == golden["meta"]["captions"] == 16213
    assert fallbacks == golden["meta"]["random_fallback"]
    assert not mismatches, f"{len(mismatches)} of {total} captions differ, e.g. {mismatches[:3]}"


def test_published_masking_by_hand():
    """Hand-worked cases of the published str.replace semantics (no spaCy needed)."""
    rng = random.Random(0)
    # Every occurrence of a keyword text is replaced, inside other words too.
    assert mask_published("a cat has a hat", ["a cat", "a hat"], rng) == "$ has $"
    assert mask_published("is a little darker", ["a"], rng) == "is $ little d$rker"
    # A keyword not found verbatim switches to one random word (all its occurrences) and stops.
    chosen = random.Random(5).sample("is red and red".split(" "), k=1)[0]
    expected = "is [$] and [$]".replace(chosen, "[$]").replace("[$]", "$")  # 'red' first, then the fallback word
    assert mask_published("is red and red", ["red", "x y"], random.Random(5)) == expected
    chosen = random.Random(7).sample(["runs", "fast"], k=1)[0]
    assert mask_published("runs fast", [], random.Random(7)) == "runs fast".replace(chosen, "$")
    assert clean_published_caption("  Has A $Logo  and  Stripes ") == "has a logo  and  stripes"


def test_published_tokenisation_splits_the_pad_token_and_the_mask():
    import open_clip

    tokenizer = open_clip.get_tokenizer("ViT-L-14")
    word = tokenizer.encode("hello")
    ids = tokenize_published(tokenizer, ["$ hello!)", "hello"])
    # '!' is LinCIR's pad token (id 0), split out like '[$]' (259); ')' is BPE'd alone.
    assert ids[0, :6].tolist() == [49406, 259, *word, 0, *tokenizer.encode(")"), 49407][:6]
    assert ids[1, :3].tolist() == [49406, *word, 49407] and not ids[1, 3:].any()
    long = tokenize_published(tokenizer, ["hello " * 80 + "$"])  # the mask falls beyond 77 tokens
    assert long[0].tolist() == tokenize_published(tokenizer, ["a photo of $"])[0].tolist()


def test_training_with_published_masking_feeds_the_published_ids(tmp_path, monkeypatch):
    """train_phi_lincir(masking="published") encodes LinCIR's masked ids (hand-worked here)."""
    import irkit.methods.lincir as lincir
    from irkit.cir.training import TrainingConfig
    from irkit.models import create_model
    from irkit.runs import RunFolder

    loaded = create_model("irkit-tiny", seed=0, random_init=True)
    seen = []
    real = lincir.encode_with_pseudo_tokens

    def recording(model, ids, tokens, placeholder_id, mode):
        seen.extend(tuple(row[:row.index(EOT) + 1]) for row in ids.tolist())
        return real(model, ids, tokens, placeholder_id, mode)

    monkeypatch.setattr(lincir, "encode_with_pseudo_tokens", recording)
    encode = loaded.tokenizer.encode
    run = RunFolder.create(tmp_path, "published", {})
    try:
        lincir.train_phi_lincir(loaded, ["A red car!", "the  white bus", "Two dogs on the grass"], run,
                                TrainingConfig(steps=1, batch_size=3, validate_every=100, seed=0), masking="published")
    finally:
        run.close()
    # "a red car!" -> "[$]!" ('!' = pad id 0); "the  white bus": the inner double space is kept, spaCy
    # makes it a SPACE token that splits the run -> "[$]  [$]"; "two dogs on the grass" -> "two [$] on [$]".
    assert sorted(seen) == sorted([(49406, 259, 0, EOT), (49406, 259, 259, EOT),
                                   (49406, *encode("two"), 259, *encode("on"), 259, EOT)])
    with pytest.raises(Exception, match="unknown LinCIR masking"):
        lincir.train_phi_lincir(loaded, ["a"], None, TrainingConfig(steps=1), masking="nope")
