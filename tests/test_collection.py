"""irkit.collection: clip-retrieval layout round trip, shard order, validation, search and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from irkit.cli import main as irkit_main
from irkit.collection import (
    read_collection_info,
    read_embedding_collection,
    read_text_embeddings,
    search_collection,
    write_embedding_collection,
)
from irkit.errors import InputError


def unit_rows(count: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def metadata_for(count: int, offset: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"image_path": [f"/g/{offset + i}.jpg" for i in range(count)],
                         "caption": [f"caption {offset + i}" for i in range(count)]})


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(tmp_path, dtype):
    image, text = unit_rows(6, 8), unit_rows(6, 8, seed=1)
    folder = write_embedding_collection(tmp_path / "c", image, metadata_for(6), text_embeddings=text,
                                        dtype=dtype, info={"model_name": "m"})
    stored = np.load(folder / "img_emb" / "img_emb_0.npy")
    assert stored.dtype == np.dtype(dtype)
    assert (folder / "text_emb" / "text_emb_0.npy").is_file()
    assert (folder / "metadata" / "metadata_0.parquet").is_file()
    embeddings, metadata = read_embedding_collection(folder)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, image, atol=1e-3 if dtype == "float16" else 0)
    np.testing.assert_allclose(read_text_embeddings(folder), text, atol=1e-3 if dtype == "float16" else 0)
    pd.testing.assert_frame_equal(metadata, metadata_for(6))
    assert read_collection_info(folder)["model_name"] == "m"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def write_shard(folder: Path, shard: int, embeddings: np.ndarray, metadata: pd.DataFrame) -> None:
    (folder / "img_emb").mkdir(parents=True, exist_ok=True)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    np.save(folder / "img_emb" / f"img_emb_{shard}.npy", embeddings)
    metadata.to_parquet(folder / "metadata" / f"metadata_{shard}.parquet", index=False)


def test_reads_shards_in_numeric_order(tmp_path):
    folder = tmp_path / "foreign"
    shards = {0: 2, 1: 3, 2: 1, 10: 2}  # lexicographic order would put 10 before 2
    expected_rows, expected_paths, offset = [], [], 0
    for shard, count in shards.items():
        rows = unit_rows(count, 4, seed=shard)
        write_shard(folder, shard, rows.astype(np.float16), metadata_for(count, offset))
        expected_rows.append(rows)
        expected_paths += [f"/g/{offset + i}.jpg" for i in range(count)]
        offset += count
    embeddings, metadata = read_embedding_collection(folder)
    np.testing.assert_allclose(embeddings, np.concatenate(expected_rows), atol=1e-3)
    assert metadata["image_path"].tolist() == expected_paths
    assert read_text_embeddings(folder) is None


def test_row_count_mismatch_is_an_error(tmp_path):
    folder = tmp_path / "c"
    write_shard(folder, 0, unit_rows(3, 4), metadata_for(2))
    with pytest.raises(InputError, match="3 embeddings but metadata_0.parquet has 2 rows"):
        read_embedding_collection(folder)


def test_missing_embedding_shard_is_an_error(tmp_path):
    folder = tmp_path / "c"
    write_shard(folder, 0, unit_rows(2, 4), metadata_for(2))
    metadata_for(2).to_parquet(folder / "metadata" / "metadata_1.parquet", index=False)
    with pytest.raises(InputError, match=r"shards \[0\] but metadata/ has \[0, 1\]"):
        read_embedding_collection(folder)


def test_unnormalised_rows_are_refused(tmp_path):
    rows = unit_rows(4, 4)
    rows[2] *= 2.0
    with pytest.raises(InputError, match="row 2 has norm 2.0000"):
        write_embedding_collection(tmp_path / "w", rows, metadata_for(4))
    write_shard(tmp_path / "r", 0, rows, metadata_for(4))
    with pytest.raises(InputError, match="row 2 has norm 2.0000"):
        read_embedding_collection(tmp_path / "r")


def test_write_validation(tmp_path):
    rows = unit_rows(3, 4)
    with pytest.raises(InputError, match="'image_path' column"):
        write_embedding_collection(tmp_path / "a", rows, pd.DataFrame({"path": ["x"] * 3}))
    with pytest.raises(InputError, match="metadata has 2 rows but there are 3"):
        write_embedding_collection(tmp_path / "b", rows, metadata_for(2))
    write_embedding_collection(tmp_path / "c", rows, metadata_for(3))
    with pytest.raises(InputError, match="already exists"):
        write_embedding_collection(tmp_path / "c", rows, metadata_for(3))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@dataclass
class FakeTextModel:
    """Stands in for a LoadedModel: fixed text embeddings, so the ranking can be worked out by hand."""

    model_name: str = "irkit-tiny"
    weights_id: str = "sha256:abc"
    embed_dim: int = 2

    def encode_texts(self, texts):
        table = {"east": [1.0, 0.0], "north": [0.0, 1.0]}
        return np.array([table[t] for t in texts], dtype=np.float32)


def test_search_collection_ranks_by_cosine(tmp_path):
    angles = np.deg2rad([80.0, 10.0, 45.0, 170.0])  # cos to east: .17 .98 .71 -.98
    rows = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    folder = write_embedding_collection(tmp_path / "c", rows, metadata_for(4), dtype="float32",
                                        info={"model_name": "irkit-tiny", "weights_id": "sha256:abc"})
    results = search_collection(FakeTextModel(), folder, ["east", "north"], k=3)
    assert [hit["row"] for hit in results[0]["results"]] == [1, 2, 0]
    assert [hit["row"] for hit in results[1]["results"]] == [0, 2, 1]  # sin: .98 .71 .17
    assert results[0]["results"][0]["image_path"] == "/g/1.jpg"
    assert results[0]["results"][0]["score"] == pytest.approx(np.cos(np.deg2rad(10.0)), abs=1e-5)
    with pytest.raises(InputError, match="weights_id 'sha256:abc'"):
        search_collection(FakeTextModel(weights_id="random-init:0"), folder, ["east"], k=1)


def test_cli_embed_images_and_search(tmp_path, capsys, monkeypatch):
    import irkit.cli

    monkeypatch.setattr(irkit.cli, "_GROUPS", ("embed",))  # only this group: isolated from the others
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png", "sub/c.jpg"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(images / name)
    out, cache = tmp_path / "collection", tmp_path / "cache"
    code = irkit_main(["embed", "images", "--images", str(images), "--out", str(out),
                       "--cache-dir", str(cache), "--num-workers", "0", "--dtype", "float32", "--random-init"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 3 and summary["weights_id"] == "random-init:0"
    embeddings, metadata = read_embedding_collection(out)
    assert embeddings.shape == (3, summary["dim"]) and summary["dim"] > 0
    assert metadata["image_name"].tolist() == ["a.jpg", "b.png", "sub/c.jpg"]
    assert len(list(cache.glob("*.npy"))) == 1

    code = irkit_main(["embed", "search", "--collection", str(out), "--query", "a red car", "-k", "2",
                       "--random-init"])
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["query"] == "a red car" and [h["rank"] for h in result["results"]] == [1, 2]
    scores = [h["score"] for h in result["results"]]
    assert scores[0] >= scores[1]

    code = irkit_main(["embed", "images", "--images", str(images), "--out", str(out), "--random-init"])
    assert code == 2
    assert "already exists" in capsys.readouterr().err
