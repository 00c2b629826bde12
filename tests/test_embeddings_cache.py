"""irkit.embeddings: correct rows in order, cache keyed by weights/transform/files/normalisation,
corruption detected."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irkit.embeddings import collect_image_paths, encode_image_files, image_cache_material, num_threads, torch_threads
from irkit.errors import InputError
from irkit.models import create_model, save_weights


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        height, width = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        path = folder / f"img_{i}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


class CountingModel:
    """Wrap ``loaded.encode_images`` to count the images the encoder actually sees."""

    def __init__(self, loaded):
        self.loaded, self.images = loaded, 0
        original = loaded.encode_images

        def counted(pixels: torch.Tensor) -> torch.Tensor:
            self.images += len(pixels)
            return original(pixels)

        loaded.encode_images = counted


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_weights(create_model("irkit-tiny", seed=3, random_init=True), path)
    return path


@pytest.fixture
def images(tmp_path) -> list[Path]:
    return write_images(tmp_path / "images", 5)


def manual_embeddings(loaded, paths) -> np.ndarray:
    """Independent path: one image at a time, model called directly."""
    rows = []
    with torch.no_grad():
        for path in paths:
            pixels = loaded.preprocess(Image.open(path).convert("RGB")).unsqueeze(0)
            rows.append(torch.nn.functional.normalize(loaded.model.encode_image(pixels), dim=-1)[0].numpy())
    return np.stack(rows)


def test_rows_match_manual_encoding_in_order(checkpoint, images):
    loaded = create_model(checkpoint=checkpoint)
    expected = manual_embeddings(loaded, images)
    in_process = encode_image_files(loaded, images, batch_size=2, num_workers=0)
    workers = encode_image_files(loaded, images[::-1], batch_size=2, num_workers=2)  # decode + encode
    decode_workers = encode_image_files(loaded, images, batch_size=2, num_workers=2, encode_in_workers=False)
    np.testing.assert_allclose(decode_workers, expected, atol=1e-5)
    assert in_process.shape == (5, loaded.embed_dim) and in_process.dtype == np.float32
    np.testing.assert_allclose(in_process, expected, atol=1e-5)
    np.testing.assert_allclose(workers, expected[::-1], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(in_process, axis=1), 1.0, atol=1e-5)


def raw_features(loaded, paths) -> np.ndarray:
    """Independent path: preprocess every image, one stacked batch through ``model.encode_image``."""
    pixels = torch.stack([loaded.preprocess(Image.open(path).convert("RGB")) for path in paths])
    with torch_threads(), torch.no_grad():
        return loaded.model.encode_image(pixels).float().numpy()


def count_tower_calls(loaded) -> list[int]:
    """Wrap ``loaded.model.encode_image``; the returned list grows by the batch size of each call."""
    calls, original = [], loaded.model.encode_image

    def counted(pixels: torch.Tensor) -> torch.Tensor:
        calls.append(len(pixels))
        return original(pixels)

    loaded.model.encode_image = counted
    return calls


def test_raw_features_are_the_image_towers_output(checkpoint, images):
    loaded = create_model(checkpoint=checkpoint)
    expected = raw_features(loaded, images)
    raw = encode_image_files(loaded, images, batch_size=len(images), num_workers=0, normalize=False)
    assert raw.shape == (5, loaded.embed_dim) and raw.dtype == np.float32
    np.testing.assert_array_equal(raw, expected)  # same pixels, same batch, same threads
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)  # really unnormalised
    workers = encode_image_files(loaded, images[::-1], batch_size=2, num_workers=2, normalize=False)
    decode_workers = encode_image_files(loaded, images, batch_size=2, num_workers=2, encode_in_workers=False,
                                        normalize=False)
    np.testing.assert_allclose(workers, expected[::-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(decode_workers, expected, rtol=1e-5, atol=1e-5)
    normalised = encode_image_files(loaded, images, batch_size=2, num_workers=0)
    np.testing.assert_allclose(normalised, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6)


def test_raw_features_second_call_reads_the_cache(tmp_path, checkpoint, images):
    cache = tmp_path / "cache"
    first_model = create_model(checkpoint=checkpoint)
    calls = count_tower_calls(first_model)
    first = encode_image_files(first_model, images, batch_size=4, num_workers=0, cache_dir=cache, normalize=False)
    assert sum(calls) == 5
    (entry,) = cache.glob("*.json")
    material = json.loads(entry.read_text())["material"]
    assert material["kind"] == "image_features_raw"
    # every other key field is the normalised cache's: weights, precision, transform, files, ...
    assert {**material, "kind": "image_embeddings"} == image_cache_material(first_model, material["files"])

    fresh = create_model(checkpoint=checkpoint)  # same weights, new process state; must not encode

    def fail(pixels: torch.Tensor) -> torch.Tensor:
        raise AssertionError("encode_image called although the raw features are cached")

    fresh.model.encode_image = fail
    second = encode_image_files(fresh, images, batch_size=4, num_workers=0, cache_dir=cache, normalize=False)
    assert second.dtype == np.float32
    np.testing.assert_array_equal(first, second)


def test_normalised_and_raw_requests_never_share_entries(tmp_path, checkpoint, images):
    cache = tmp_path / "cache"
    loaded = create_model(checkpoint=checkpoint)
    uncached = encode_image_files(loaded, images, num_workers=0)
    calls = count_tower_calls(loaded)
    normalised = encode_image_files(loaded, images, num_workers=0, cache_dir=cache)
    assert sum(calls) == 5
    raw = encode_image_files(loaded, images, num_workers=0, cache_dir=cache, normalize=False)
    assert sum(calls) == 10  # the normalised entry is not reused for raw rows
    assert len(list(cache.glob("*.npy"))) == 2 and len(list(cache.glob("*.json"))) == 2
    again_normalised = encode_image_files(loaded, images, num_workers=0, cache_dir=cache)
    again_raw = encode_image_files(loaded, images, num_workers=0, cache_dir=cache, normalize=False)
    assert sum(calls) == 10  # both read from their own entries
    # normalised results are unchanged by the raw option and by the cache
    np.testing.assert_array_equal(normalised, uncached)
    np.testing.assert_array_equal(again_normalised, uncached)
    np.testing.assert_allclose(again_normalised, manual_embeddings(loaded, images), atol=1e-5)
    np.testing.assert_array_equal(again_raw, raw)
    assert not np.allclose(raw, normalised, atol=1e-3)


def test_unchanged_key_reuses_cache(tmp_path, checkpoint, images):
    cache = tmp_path / "cache"
    counter = CountingModel(create_model(checkpoint=checkpoint))
    first = encode_image_files(counter.loaded, images, batch_size=4, num_workers=0, cache_dir=cache)
    assert counter.images == 5
    assert len(list(cache.glob("*.npy"))) == 1 and len(list(cache.glob("*.json"))) == 1
    fresh = CountingModel(create_model(checkpoint=checkpoint))  # same weights, new process state
    second = encode_image_files(fresh.loaded, images, batch_size=4, num_workers=0, cache_dir=cache)
    assert fresh.images == 0
    np.testing.assert_array_equal(first, second)


def test_changed_checkpoint_content_recomputes(tmp_path, images):
    cache, path = tmp_path / "cache", tmp_path / "model.safetensors"
    save_weights(create_model(seed=4, random_init=True), path)
    first = encode_image_files(create_model(checkpoint=path), images, num_workers=0, cache_dir=cache)
    save_weights(create_model(seed=5, random_init=True), path)  # same path, different content
    counter = CountingModel(create_model(checkpoint=path))
    second = encode_image_files(counter.loaded, images, num_workers=0, cache_dir=cache)
    assert counter.images == 5
    assert not np.allclose(first, second)
    np.testing.assert_allclose(second, manual_embeddings(counter.loaded, images), atol=1e-5)


def test_changed_transform_recomputes(tmp_path, checkpoint, images):
    cache = tmp_path / "cache"
    encode_image_files(create_model(checkpoint=checkpoint), images, num_workers=0, cache_dir=cache)
    counter = CountingModel(create_model(checkpoint=checkpoint, transform="center"))
    encode_image_files(counter.loaded, images, num_workers=0, cache_dir=cache)
    assert counter.images == 5
    again = CountingModel(create_model(checkpoint=checkpoint, transform="center"))
    encode_image_files(again.loaded, images, num_workers=0, cache_dir=cache)
    assert again.images == 0


def test_changed_file_list_recomputes(tmp_path, checkpoint, images):
    cache = tmp_path / "cache"
    counter = CountingModel(create_model(checkpoint=checkpoint))
    encode_image_files(counter.loaded, images, num_workers=0, cache_dir=cache)
    assert counter.images == 5

    extra = write_images(tmp_path / "more", 1, seed=9)
    encode_image_files(counter.loaded, images + extra, num_workers=0, cache_dir=cache)
    assert counter.images == 5 + 6  # added file -> new key

    stat = images[0].stat()
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    encode_image_files(counter.loaded, images, num_workers=0, cache_dir=cache)
    assert counter.images == 11  # only the mtime changed, the bytes did not -> same key, reused

    data = bytearray(images[0].read_bytes())
    data[-1] ^= 0x01  # same size; then the old mtime is put back, as cp -p / rsync -t / tar do
    stat = images[0].stat()
    images[0].write_bytes(bytes(data))
    os.utime(images[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert images[0].stat().st_size == stat.st_size and images[0].stat().st_mtime_ns == stat.st_mtime_ns
    encode_image_files(counter.loaded, images, num_workers=0, cache_dir=cache)
    assert counter.images == 11 + 5  # changed content at the same size and mtime -> new key

    encode_image_files(counter.loaded, images, num_workers=0, cache_dir=cache)
    assert counter.images == 16  # unchanged since -> reused


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
def test_corrupt_cache_is_detected_and_recomputed(tmp_path, checkpoint, images, caplog, damage):
    cache = tmp_path / "cache"
    counter = CountingModel(create_model(checkpoint=checkpoint))
    first = encode_image_files(counter.loaded, images, num_workers=0, cache_dir=cache)
    (npy,) = cache.glob("*.npy")
    data = bytearray(npy.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-3] ^= 0xFF  # same size, one float changed: only the hash can tell
    npy.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="irkit.embeddings"):
        second = encode_image_files(counter.loaded, images, num_workers=0, cache_dir=cache)
    assert counter.images == 10
    assert any("corrupt" in r.getMessage() or "recomputing" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(first, second)
    # the rewritten entry is valid again
    encode_image_files(counter.loaded, images, num_workers=0, cache_dir=cache)
    assert counter.images == 10


def test_missing_and_undecodable_images_name_the_file(tmp_path, checkpoint, images):
    loaded = create_model(checkpoint=checkpoint)
    missing = tmp_path / "images" / "gone.png"
    with pytest.raises(InputError, match="image file not found") as info:
        encode_image_files(loaded, images + [missing], num_workers=0)
    assert str(missing) in str(info.value)
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_text("this is not a JPEG")
    for workers in (0, 2):
        with pytest.raises(InputError, match="cannot decode image") as info:
            encode_image_files(loaded, images + [broken], batch_size=2, num_workers=workers, cache_dir=tmp_path / "c")
        assert str(broken) in str(info.value)
    cache = tmp_path / "c"
    assert not cache.exists() or not any(cache.iterdir())  # nothing cached for a failed run


def test_collect_image_paths_from_folder_and_list(tmp_path, images):
    assert collect_image_paths(tmp_path / "images") == sorted(images, key=lambda p: p.name)
    listing = tmp_path / "list.txt"
    listing.write_text("# gallery\nimages/img_3.png\n\nimages/img_1.png\n")
    assert collect_image_paths(listing) == [tmp_path / "images/img_3.png", tmp_path / "images/img_1.png"]
    listing.write_text("images/img_3.png\nimages/nope.png\n")
    with pytest.raises(InputError, match="line 2.*nope.png"):
        collect_image_paths(listing)


def test_num_threads_respects_env(monkeypatch):
    monkeypatch.setenv("IRKIT_NUM_THREADS", "3")
    assert num_threads() == 3
    monkeypatch.setenv("IRKIT_NUM_THREADS", "zero")
    with pytest.raises(InputError, match="IRKIT_NUM_THREADS"):
        num_threads()
    monkeypatch.delenv("IRKIT_NUM_THREADS")
    assert num_threads() == len(os.sched_getaffinity(0))
