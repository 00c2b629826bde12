"""Bad data, weights and queries: one clear line, or the exactly corrected result (issue 12).

Two parametrised suites, one entry per class of bad input:

* ``ERRORS``: the input must raise :class:`InputError` (or end a CLI command with exit 2 and
  one line) naming the file / field and stating what was expected;
* ``RESULTS``: the input must give an exact, independently computed behaviour (a cache that
  notices changed bytes, an image turned by its EXIF tag, a warning with the right count,
  a damaged demo folder rebuilt to its original bytes).

The classes: non-finite weights and embeddings (made and loaded), missing weights without
``random_init``, content-keyed cache, truncated and empty queries, EXIF orientation, pixel
limit, damaged demo data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from PIL import Image

from irkit.errors import InputError

from loader_fixtures import TRAFFIC_TEST_IMAGES, make_traffic

CONTEXT = 32  # irkit-tiny's text context (src/irkit/models/configs/irkit-tiny.json)


# ------------------------------------------------------------------------------ shared inputs


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """A finite irkit-tiny checkpoint and copies with one NaN / one Inf value."""
    from safetensors.torch import load_file, save_file

    from irkit.models import create_model, save_weights

    folder = tmp_path_factory.mktemp("weights")
    good = save_weights(create_model("irkit-tiny", seed=3, random_init=True), folder / "good.safetensors")
    tensors = load_file(str(good))
    out = {"good": good}
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        broken = {k: v.clone() for k, v in tensors.items()}
        broken["text_projection"].view(-1)[5] = value
        save_file(broken, str(folder / f"{name}.safetensors"), metadata={"model_name": "irkit-tiny"})
        out[name] = folder / f"{name}.safetensors"
    return out


@pytest.fixture(scope="module")
def loaded(weights):
    from irkit.models import create_model

    return create_model(checkpoint=weights["good"])


def write_png(path: Path, seed: int, size: tuple[int, int] = (30, 20), exif_orientation: Optional[int] = None
              ) -> np.ndarray:
    """A random RGB PNG of ``size`` (width, height); returns its pixels [H, W, 3]."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if exif_orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    return pixels


def write_bmp(path: Path, seed: int) -> Path:
    """An uncompressed 8 x 6 BMP: changing a pixel keeps the file size."""
    pixels = np.random.default_rng(seed).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` (no pixel data): only a reader that checks
    the size before decoding can answer it without allocating the image."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def traffic_with_images(root: Path) -> Path:
    """The hand-made traffic layout with decodable test images."""
    make_traffic(root)
    for i, name in enumerate(TRAFFIC_TEST_IMAGES):
        write_png(root / "test" / "test_images" / name, seed=i)
    return root


def run_cli(argv: list, capsys) -> tuple[int, str]:
    """``(exit code, stderr)`` of ``irkit`` run in-process."""
    from irkit.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def poisoned(loaded, tower: str):
    """A copy of ``loaded`` whose image or text tower returns NaN in row 1 (an fp16 overflow)."""
    import copy

    model = copy.copy(loaded.model)
    original = getattr(loaded.model, tower)

    def forward(x, *args, **kwargs):
        out = original(x, *args, **kwargs).clone()
        out[min(1, len(out) - 1)] = float("nan")
        return out

    setattr(model, tower, forward)
    clone = copy.copy(loaded)
    clone.model = model
    return clone


# ------------------------------------------------------------------------------ error cases


@dataclass
class Case:
    """``build(tmp_path, fixtures)`` returns the call that must fail (or, for ``cli``, the argv)."""

    build: Callable[[Path, dict], object]
    file: Optional[str]              # name of the file the message must name (None: no file)
    expect: tuple[str, ...]          # substrings of the message
    field: Optional[str] = None
    cli: bool = False                # build returns argv; exit 2 with one line on stderr
    absent: tuple[str, ...] = ()     # files (relative to tmp) that must not exist afterwards


def _create(**kwargs):
    def build(tmp, fx):
        from irkit.models import create_model

        args = {k: (fx["weights"][v] if k == "checkpoint" else v) for k, v in kwargs.items()}
        return lambda: create_model("irkit-tiny", **args)
    return build


def _nan_infer_cli(tmp, fx):
    root = traffic_with_images(tmp / "traffic")
    return ["infer", "traffic", "--root", root, "--prompt", "none", "--out", tmp / "out", "--k", "1",
            "--checkpoint", fx["weights"]["nan"], "--num-workers", "0", "--cache-dir", "none"]


def _poisoned_images(tmp, fx):
    from irkit.embeddings import encode_image_files

    paths = [tmp / "a.png", tmp / "b.png"]
    for i, path in enumerate(paths):
        write_png(path, seed=i)
    bad = poisoned(fx["loaded"], "encode_image")
    return lambda: encode_image_files(bad, paths, num_workers=0, cache_dir=tmp / "cache")


def _poisoned_texts(tmp, fx):
    bad = poisoned(fx["loaded"], "encode_text")
    return lambda: bad.encode_texts(["a red car", "a white bus"])


def _poisoned_cir_texts(tmp, fx):
    from irkit.cir.features import raw_text_embeddings

    bad = poisoned(fx["loaded"], "encode_text")
    return lambda: raw_text_embeddings(bad, ["make it red", "add a dog"])


def _nan_cache_entry(tmp, fx):
    from irkit.embeddings import encode_image_files, file_fingerprints, image_cache_material, save_cached_array
    from irkit.io import stable_hash

    loaded = fx["loaded"]
    path = tmp / "a.png"
    write_png(path, seed=1)
    material = image_cache_material(loaded, file_fingerprints([path]))
    nan_rows = np.full((1, loaded.embed_dim), np.nan, np.float32)
    save_cached_array(tmp / "cache", stable_hash(material), material, nan_rows)  # a valid record, NaN rows
    return lambda: encode_image_files(loaded, [path], num_workers=0, cache_dir=tmp / "cache")


def _nan_collection(tmp, fx):
    import pandas as pd

    from irkit.collection import read_embedding_collection

    folder = tmp / "collection"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    rows = np.eye(2, 4, dtype=np.float32)
    rows[1, :] = np.nan
    np.save(folder / "img_emb" / "img_emb_0.npy", rows)
    pd.DataFrame({"image_path": ["a.jpg", "b.jpg"]}).to_parquet(folder / "metadata" / "metadata_0.parquet")
    return lambda: read_embedding_collection(folder)


def _no_weights_cli(command: str):
    def build(tmp, fx):
        write_png(tmp / "images" / "a.png", seed=0)
        if command == "images":
            return ["embed", "images", "--images", tmp / "images", "--out", tmp / "collection"]
        return ["embed", "search", "--collection", tmp / "collection", "--query", "a red car"]
    return build


def _no_weights_table(tmp, fx):
    from irkit.experiments.cir_table import run_cir_table

    return lambda: run_cir_table(tmp / "data", tmp / "table", train_clip=False, fusion=False)


def _quick_review_both(tmp, fx):
    from irkit.traffic.stages import TrafficRunParams, open_run

    params = TrafficRunParams(checkpoint=str(fx["weights"]["good"]), random_init=True)
    return lambda: open_run(params, tmp / "run", "quick-review")


def _empty_search_query(tmp, fx):
    import pandas as pd

    from irkit.collection import search_collection, write_embedding_collection

    loaded = fx["loaded"]
    rows = np.eye(3, loaded.embed_dim, dtype=np.float32)
    folder = write_embedding_collection(tmp / "collection", rows, pd.DataFrame({"image_path": ["a", "b", "c"]}))
    return lambda: search_collection(loaded, folder, ["a red car", " \t "], k=2)


def _empty_test_query(tmp, fx):
    from irkit.data.traffic import load_traffic

    root = make_traffic(tmp / "traffic", ground_truth=False)
    (root / "test" / "test_text.txt").write_text("A white Audi sedan.\n   \nA man in a red coat.\n")
    return lambda: load_traffic(root, "test")


def _oversized(width: int, height: int, **reader):
    def build(tmp, fx):
        from irkit.transforms import ImageReader

        path = png_header_only(tmp / "huge.png", width, height)
        return lambda: ImageReader(**reader).open(path)
    return build


def _oversized_in_encoder(tmp, fx):
    from irkit.embeddings import encode_image_files
    from irkit.transforms import ImageReader

    paths = [tmp / "ok.png", tmp / "big.png"]
    write_png(paths[0], seed=0)
    write_png(paths[1], seed=1, size=(120, 100))
    return lambda: encode_image_files(fx["loaded"], paths, num_workers=0, reader=ImageReader(max_pixels=10_000))


def _pixel_limit_option(tmp, fx):
    return ["embed", "images", "--images", tmp, "--out", tmp / "c", "--random-init", "--max-image-pixels", "0"]


ERRORS = {
    # (2) non-finite values: in the weights file, produced by the towers, in a cache entry, in a collection
    "checkpoint-with-nan": Case(_create(checkpoint="nan"), "nan.safetensors",
                                ("non-finite values (NaN/Inf)", "text_projection (1)", "expected finite weights")),
    "checkpoint-with-inf": Case(_create(checkpoint="inf"), "inf.safetensors",
                                ("non-finite values (NaN/Inf)", "text_projection (1)")),
    "infer-with-nan-checkpoint": Case(_nan_infer_cli, "nan.safetensors", ("non-finite values",), cli=True,
                                      absent=("out/inference.json", "out/vehicle_results.json")),
    "image-tower-gives-nan": Case(_poisoned_images, "good.safetensors",
                                  ("image embeddings hold 128 non-finite values (NaN/Inf) of 256",
                                   "model 'irkit-tiny' (checkpoint ")),
    "text-tower-gives-nan": Case(_poisoned_texts, "good.safetensors",
                                 ("text embeddings hold 128 non-finite values (NaN/Inf) of 256",)),
    "cir-text-tower-gives-nan": Case(_poisoned_cir_texts, None, ("text embeddings hold 128 non-finite values",
                                                                 "good.safetensors")),
    "cached-embeddings-with-nan": Case(_nan_cache_entry, ".npy", ("cached embeddings hold 128 non-finite values",
                                                                  "delete it to recompute")),
    "collection-with-nan": Case(_nan_collection, "img_emb_0.npy", ("img_emb shard 0 hold 4 non-finite values",)),
    # (3) no weights: an error unless random init is asked for
    "library-without-weights": Case(_create(), None, ("no weights given for model 'irkit-tiny'", "--random-init",
                                                      "random_init=True"), field="checkpoint"),
    "embed-images-without-weights": Case(_no_weights_cli("images"), None, ("no weights given", "--checkpoint PATH",
                                                                           "--random-init"), cli=True,
                                         absent=("collection",)),
    "embed-search-without-weights": Case(_no_weights_cli("search"), None, ("no weights given",), cli=True),
    "random-init-and-checkpoint": Case(_create(checkpoint="good", random_init=True), None,
                                       ("random init was asked for together with weights",), field="random_init"),
    "table-no-training-without-weights": Case(_no_weights_table, None, ("--no-clip-training", "none were given"),
                                              field="checkpoint", absent=("table",)),
    "quick-review-random-init-and-checkpoint": Case(_quick_review_both, None, ("random_init was asked for",),
                                                    field="random_init", absent=("run",)),
    # (4) empty queries
    "empty-search-query": Case(_empty_search_query, None, ("query 2 of 2 is empty", "non-empty query text"),
                               field="query"),
    "whitespace-test-query-line": Case(_empty_test_query, "test_text.txt", ("blank line inside the file",
                                                                            "one text query per line")),
    # (6) pixel limit, checked before decoding
    "image-over-the-default-limit": Case(_oversized(10_000, 10_000), "huge.png",
                                         ("10000 x 10000 = 100,000,000 pixels", "limit of 64,000,000",
                                          "--max-image-pixels")),
    "image-over-pils-own-limit": Case(_oversized(20_000, 20_000, max_pixels=1_000_000), "huge.png",
                                      ("over the", "1,000,000", "--max-image-pixels")),
    "image-over-the-limit-in-the-encoder": Case(_oversized_in_encoder, "big.png",
                                                ("120 x 100 = 12,000 pixels", "limit of 10,000")),
    "non-positive-pixel-limit": Case(_pixel_limit_option, None, ("--max-image-pixels", "expected a positive integer"),
                                     cli=True),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_input_is_one_clear_line(name, tmp_path, weights, loaded, capsys):
    case = ERRORS[name]
    built = case.build(tmp_path, {"weights": weights, "loaded": loaded})
    if case.cli:
        try:
            code, message = run_cli(built, capsys)
            assert len(message.strip().splitlines()) == 1, message  # irkit's own one line
        except SystemExit as stop:  # argparse rejects the value itself: usage, then one error line
            code, message = stop.code, capsys.readouterr().err
        assert code == 2
        assert "Traceback" not in message, message
        message = message.strip().splitlines()[-1]
    else:
        with pytest.raises(InputError) as info:
            built()
        message = str(info.value)
        assert "\n" not in message
        if case.field is not None:
            assert info.value.field == case.field, message
    if case.file is not None:
        assert case.file in message, message
    for part in case.expect:
        assert part in message, (part, message)
    for relative in case.absent:
        assert not (tmp_path / relative).exists(), relative


# ------------------------------------------------------------------------------ exact-result cases


def _cache_sees_same_size_same_mtime_change(tmp, fx):
    """(4) cp -p / rsync -t: new bytes, same size, same mtime -> recomputed, equal to a fresh encode."""
    from irkit.embeddings import encode_image_files

    loaded = fx["loaded"]
    path = write_bmp(tmp / "images" / "a.bmp", seed=0)
    other = write_bmp(tmp / "images" / "b.bmp", seed=1)
    first = encode_image_files(loaded, [path, other], num_workers=0, cache_dir=tmp / "cache")
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one pixel byte (BMP rows are stored raw)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    second = encode_image_files(loaded, [path, other], num_workers=0, cache_dir=tmp / "cache")
    fresh = encode_image_files(loaded, [path, other], num_workers=0, cache_dir=None)
    np.testing.assert_array_equal(second, fresh)
    assert not np.array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert len(list((tmp / "cache").glob("*.npy"))) == 2


def _cache_key_is_blake2b_of_the_bytes(tmp, fx):
    """(4) the fingerprint's content part is BLAKE2b-128 of the file's bytes (hashlib, independently)."""
    from irkit.embeddings import file_fingerprints

    path = write_bmp(tmp / "a.bmp", seed=2)
    ((absolute, size, digest),) = file_fingerprints([path])
    assert absolute == str(path.resolve()) and size == path.stat().st_size
    assert digest == hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _truncation_warned_once_with_count(tmp, fx, caplog):
    """(5) 30 words = 32 tokens with start/end (fits), 31 and 300 words do not: one warning, count 2."""
    import open_clip

    loaded = fx["loaded"]
    texts = ["car " * 30, "car " * 31, "a red car", "car " * 300]
    ids = open_clip.get_tokenizer("irkit-tiny")(texts[:2])
    assert ids.shape[1] == CONTEXT and int((ids[0] != 0).sum()) == CONTEXT  # the first one fills it exactly
    with caplog.at_level(logging.WARNING):
        embeddings = loaded.encode_texts(texts)
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert warnings == [f"2 of 4 texts are longer than the text context of model 'irkit-tiny' ({CONTEXT} tokens) "
                        "and were truncated to it"]
    assert embeddings.shape == (4, loaded.embed_dim) and np.isfinite(embeddings).all()


def _truncation_warned_in_cir_and_traffic(tmp, fx, caplog):
    """(5) the CIR text path and traffic inference warn the same way (one record each)."""
    from irkit.cir.features import raw_text_embeddings
    from irkit.data.traffic import load_traffic
    from irkit.traffic.inference import infer_traffic

    loaded = fx["loaded"]
    with caplog.at_level(logging.WARNING):
        raw_text_embeddings(loaded, ["dog " * 40, "make it red", "dog " * 40])  # one distinct long text
    assert [r.getMessage()[:18] for r in caplog.records if "truncated" in r.getMessage()] == ["1 of 2 texts are l"]
    caplog.clear()
    root = traffic_with_images(tmp / "traffic")
    (root / "test" / "test_text.txt").write_text("A white Audi sedan " + "with a roof rack " * 10 + ".\n"
                                                 "A man in a red coat.\n")
    (root / "test" / "test_ground_truth.txt").unlink()
    with caplog.at_level(logging.WARNING):
        infer_traffic(load_traffic(root, "test"), loaded, prompt="none", k=1, num_workers=0)
    assert [r.getMessage()[:18] for r in caplog.records if "truncated" in r.getMessage()] == ["1 of 1 texts are l"]


def _exif_orientation_applied_for_user_folders(tmp, fx):
    """(EXIF) orientation 6 = rotate 90 degrees clockwise for display: np.rot90(k=-1)."""
    from irkit.transforms import BENCHMARK_READER, USER_FOLDER_READER, ImageReader

    path = tmp / "phone.png"
    pixels = write_png(path, seed=4, size=(30, 20), exif_orientation=6)
    turned = np.asarray(USER_FOLDER_READER.open(path))
    assert turned.shape == (30, 20, 3)
    np.testing.assert_array_equal(turned, np.rot90(pixels, k=-1))
    np.testing.assert_array_equal(np.asarray(BENCHMARK_READER.open(path)), pixels)  # as published: untouched
    assert ImageReader().exif_transpose is True and BENCHMARK_READER.exif_transpose is False


def _exif_choice_is_in_the_cache_key_and_records(tmp, fx):
    """(EXIF) on/off are two cache entries with different rows; CIR contexts read as published;
    collections and inference.json record the reader."""
    from irkit.cir.context import CIRContext
    from irkit.collection import embed_images_to_collection, read_collection_info
    from irkit.embeddings import encode_image_files
    from irkit.transforms import BENCHMARK_READER

    loaded = fx["loaded"]
    path = tmp / "images" / "phone.png"
    write_png(path, seed=5, size=(40, 16), exif_orientation=6)
    turned = encode_image_files(loaded, [path], num_workers=0, cache_dir=tmp / "cache")
    plain = encode_image_files(loaded, [path], num_workers=0, cache_dir=tmp / "cache", reader=BENCHMARK_READER)
    assert len(list((tmp / "cache").glob("*.npy"))) == 2 and not np.allclose(turned, plain)
    assert CIRContext(loaded).reader == BENCHMARK_READER
    folder = embed_images_to_collection(loaded, [path], tmp / "collection")
    assert read_collection_info(folder)["reader"] == {"exif_transpose": True, "max_pixels": 64_000_000}


def _raised_pixel_limit_allows_the_image(tmp, fx):
    """(6) --max-image-pixels above PIL's own bomb limit really allows the image (PIL's is lifted)."""
    from irkit.transforms import ImageReader

    path = tmp / "wide.png"
    pixels = write_png(path, seed=6, size=(60, 50))
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000  # stands for PIL's default, 3000 x 50 x 60 below the reader's limit
    try:
        with pytest.raises(InputError, match="3,000 pixels, over the limit of 2,999"):
            ImageReader(max_pixels=2999).open(path)
        np.testing.assert_array_equal(np.asarray(ImageReader(max_pixels=3000).open(path)), pixels)
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _demo_hashes(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "demo_manifest.json"}


def _damaged_demo_is_regenerated(tmp, fx, caplog):
    """(7) a missing and a truncated demo image: the dataset is rebuilt to its original bytes."""
    from irkit.data.demo import generate_demo, verify_demo

    out = tmp / "demo"
    generate_demo(out, seed=0, scale="tiny", datasets="traffic", workers=1, progress=False)
    original = _demo_hashes(out)
    images = sorted((out / "traffic" / "test" / "test_images").iterdir())
    images[0].unlink()
    images[1].write_bytes(images[1].read_bytes()[:100])
    assert generate_demo(out, seed=0, scale="tiny", datasets="traffic", workers=1, progress=False)["skipped"] == []
    assert any("damaged" in r.getMessage() and images[0].name in r.getMessage() for r in caplog.records)
    assert _demo_hashes(out) == original
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # the damaged copy is gone
    # verify_demo (the notebooks' and stages' path) with the manifest's own seed/scale: intact -> nothing
    assert verify_demo(out, ("traffic",)) == []
    (out / "captions" / "traffic_train.csv").write_text("filepath\ttitle\n")
    assert verify_demo(out, ("traffic",)) == ["traffic"] and _demo_hashes(out) == original


def _demo_without_digests_is_regenerated(tmp, fx, caplog):
    """(7) a manifest without file digests (older irkit) cannot vouch for its files: rebuilt once."""
    from irkit.data.demo import MANIFEST_NAME, generate_demo

    out = tmp / "demo"
    generate_demo(out, seed=0, scale="tiny", datasets="traffic", workers=1, progress=False)
    original = _demo_hashes(out)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    del manifest["file_digests"]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    summary = generate_demo(out, seed=0, scale="tiny", datasets="traffic", workers=1, progress=False)
    assert summary["generated"] == ["traffic"] and _demo_hashes(out) == original
    assert generate_demo(out, seed=0, scale="tiny", datasets="traffic", workers=1, progress=False)["skipped"] \
        == ["traffic"]


def _random_init_on_purpose(tmp, fx, capsys):
    """(3) --random-init is the explicit way to a random model: it works and says so in its id."""
    from irkit.models import create_model

    assert create_model("irkit-tiny", random_init=True, seed=7).weights_id == "random-init:7"
    write_png(tmp / "images" / "a.png", seed=0)
    code, _ = run_cli(["embed", "images", "--images", tmp / "images", "--out", tmp / "c", "--random-init",
                       "--num-workers", "0", "--cache-dir", "none"], capsys)
    assert code == 0 and json.loads((tmp / "c" / "irkit_collection.json").read_text())["weights_id"] \
        == "random-init:0"


RESULTS: dict[str, Callable] = {
    "cache-same-size-same-mtime-change": _cache_sees_same_size_same_mtime_change,
    "cache-key-is-content-hash": _cache_key_is_blake2b_of_the_bytes,
    "long-texts-warned-once-with-count": _truncation_warned_once_with_count,
    "long-texts-warned-in-cir-and-traffic": _truncation_warned_in_cir_and_traffic,
    "exif-orientation-applied": _exif_orientation_applied_for_user_folders,
    "exif-choice-recorded": _exif_choice_is_in_the_cache_key_and_records,
    "raised-pixel-limit": _raised_pixel_limit_allows_the_image,
    "damaged-demo-regenerated": _damaged_demo_is_regenerated,
    "demo-without-digests-regenerated": _demo_without_digests_is_regenerated,
    "random-init-on-purpose": _random_init_on_purpose,
}


@pytest.mark.parametrize("name", list(RESULTS))
def test_bad_input_gives_the_exact_result(name, tmp_path, weights, loaded, caplog, capsys):
    check = RESULTS[name]
    extra = {"caplog": caplog, "capsys": capsys}
    import inspect

    wanted = [p for p in inspect.signature(check).parameters if p in extra]
    check(tmp_path, {"weights": weights, "loaded": loaded}, *[extra[p] for p in wanted])
