"""Exact search built once (ties, exclusions, chunked / memory-mapped shards), the ANN index of a
collection (sizing, recall recorded at build, used by search, staleness) and the search bench."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest

import irkit.cli
import irkit.index
from irkit.cli import main as irkit_main
from irkit.collection import (
    build_collection_index,
    collection_searcher,
    open_embedding_shards,
    read_embedding_collection,
    search_collection,
    write_embedding_collection,
)
from irkit.errors import InputError
from irkit.index import ExactIndex, search
from irkit.search_index import choose_index_key, nlist_for, parse_memory

REPO = Path(__file__).resolve().parents[1]


def brute_force(queries: np.ndarray, gallery: np.ndarray, k: int, exclude=None) -> list[list[int]]:
    """Top-k rows by (-score, row) with plain Python sorting (independent of irkit.index)."""
    has_exclusion = exclude is not None and any(e >= 0 for e in exclude)
    k = min(k, len(gallery) - (1 if has_exclusion else 0))
    out = []
    for q, query in enumerate(queries):
        scores = [float(np.dot(row.astype(np.float64), query.astype(np.float64))) for row in gallery]
        rows = [i for i in range(len(gallery)) if exclude is None or i != exclude[q]]
        out.append(sorted(rows, key=lambda i: (-scores[i], i))[:k])
    return out


def test_hand_built_tie_across_the_kth_place():
    # scores for the query [1, 0]: rows 0..4 -> 0.9, 0.5, 0.5, 0.5, 0.1
    gallery = np.array([[0.9, 0], [0.5, 0], [0.5, 0], [0.5, 0], [0.1, 0]], np.float32)
    query = np.array([[1.0, 0.0]], np.float32)
    assert search(query, gallery, 2)[1].tolist() == [[0, 1]]
    assert search(query, gallery, 3)[1].tolist() == [[0, 1, 2]]
    assert search(query, gallery, 2, exclude=[1])[1].tolist() == [[0, 2]]
    assert search(query, gallery, 2, exclude=[0])[1].tolist() == [[1, 2]]
    # reversed gallery: the 0.5 ties now sit at rows 1..3 again but the best is last
    scores, rows = search(query, gallery[::-1], 2)
    assert rows.tolist() == [[4, 1]] and scores.tolist() == [[pytest.approx(0.9), pytest.approx(0.5)]]


@pytest.mark.parametrize("size", [1, 2, 9, 60, 333])
def test_exact_equals_brute_force_with_ties_and_exclusions(size):
    rng = np.random.default_rng(size)
    gallery = rng.integers(-2, 3, size=(size, 4)).astype(np.float32)  # small integers: many exact ties
    queries = rng.integers(-2, 3, size=(9, 4)).astype(np.float32)
    exclude = rng.integers(-1, size, size=9)
    for k in (1, 3, 10, size + 5):
        expected = brute_force(queries, gallery, k)
        expected_excluded = brute_force(queries, gallery, k, exclude)
        index = ExactIndex(gallery)
        assert index.search(queries, k)[1].tolist() == expected
        assert index.search(queries, k, exclude=exclude)[1].tolist() == expected_excluded
        for q in range(len(queries)):  # the one-query (matrix-vector) path
            assert index.search(queries[q:q + 1], k)[1].tolist() == [expected[q]]
        # row blocks (float16 holds these integers exactly), streamed in chunks of 4 rows
        blocks = [gallery[:size // 3].astype(np.float16), gallery[size // 3:]]
        chunked = ExactIndex(blocks, chunk_rows=4)
        assert chunked.search(queries, k, exclude=exclude)[1].tolist() == expected_excluded
        assert chunked.search(queries[:1], k)[1].tolist() == [expected[0]]


@pytest.mark.parametrize("values", ["few", "continuous"])
def test_long_rows_two_stage_selection_equals_brute_force(values):
    # 6,000 columns per row: the selection goes through the 64-column block maxima
    rng = np.random.default_rng(3)
    if values == "few":  # 27 distinct rows: every rank is a tie
        gallery = rng.integers(-1, 2, size=(6000, 3)).astype(np.float32)
        queries = rng.integers(-1, 2, size=(6, 3)).astype(np.float32)
    else:
        gallery = rng.normal(size=(6000, 3)).astype(np.float32)
        queries = rng.normal(size=(6, 3)).astype(np.float32)
    exclude = rng.integers(-1, 6000, size=6)
    for k in (1, 10, 70):
        expected = brute_force(queries, gallery, k, exclude)
        assert ExactIndex(gallery).search(queries, k, exclude=exclude)[1].tolist() == expected
        assert ExactIndex([gallery[:1000], gallery[1000:]], chunk_rows=3001).search(
            queries, k, exclude=exclude)[1].tolist() == expected
        assert ExactIndex(gallery).search(queries[:1], k, exclude=exclude[:1])[1].tolist() == \
            brute_force(queries[:1], gallery, k, exclude[:1])


def test_scores_are_the_inner_products():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(3, 8)).astype(np.float32)
    scores, rows = ExactIndex(gallery).search(queries, 5)
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ gallery.T, rows, 1), rtol=1e-5)


def unit_rows(count: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_rows(count: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre_rows = unit_rows(centres, dim, seed + 100)
    x = centre_rows[rng.integers(0, centres, count)] + rng.normal(0, 0.7 / np.sqrt(dim), (count, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_shards(folder: Path, parts: list[np.ndarray]) -> Path:
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    offset = 0
    for shard, part in enumerate(parts):
        np.save(folder / "img_emb" / f"img_emb_{shard}.npy", part)
        pd.DataFrame({"image_path": [f"/g/{offset + i}.jpg" for i in range(len(part))]}).to_parquet(
            folder / "metadata" / f"metadata_{shard}.parquet", index=False)
        offset += len(part)
    return folder


def test_memory_mapped_shards_equal_in_memory(tmp_path):
    rows = unit_rows(700, 16)
    folder = write_shards(tmp_path / "c", [rows[:250].astype(np.float16), rows[250:600], rows[600:]])
    shards, paths, metadata = open_embedding_shards(folder)
    assert [type(s) for s in shards] == [np.memmap] * 3 and len(metadata) == 700
    queries = unit_rows(37, 16, seed=5)
    in_memory, _ = read_embedding_collection(folder)
    expected_scores, expected_rows = search(queries, in_memory, 10)
    scores, found = ExactIndex(shards, chunk_rows=64).search(queries, 10)
    assert found.tolist() == expected_rows.tolist()
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    assert found.tolist() == brute_force(queries, in_memory, 10)


def test_collection_searcher_is_built_once_and_rebuilt_when_the_files_change(tmp_path, monkeypatch):
    folder = write_shards(tmp_path / "c", [unit_rows(40, 8)])
    built = []
    real = irkit.index.ExactIndex

    class CountingIndex(real):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(irkit.index, "ExactIndex", CountingIndex)
    first = collection_searcher(folder, exact=True)
    assert collection_searcher(folder, exact=True) is first
    first.search(unit_rows(3, 8, 1), 5)
    assert len(built) == 1
    np.save(folder / "img_emb" / "img_emb_0.npy", unit_rows(40, 8, seed=9))  # the collection changes
    second = collection_searcher(folder, exact=True)
    assert second is not first and len(built) == 2
    np.testing.assert_array_equal(second.search(unit_rows(1, 8, 9)[:1], 1)[1], [[0]])


def test_index_key_sizing_rules():
    assert nlist_for(100_000) == 1024  # 4*sqrt(1e5) = 1265 -> nearest power of two 1024
    assert nlist_for(1_000_000) == 4096  # 4000 -> 4096
    assert nlist_for(2_000) == 32  # 179 -> 256, but k-means needs 39 rows per list: 2000/39 = 51 -> 32
    assert choose_index_key(500, 64, parse_memory("1G")) == "Flat"
    assert choose_index_key(20_000, 64, parse_memory("1G")) == "IVF512,Flat"  # 4*141 = 566 -> 512
    assert choose_index_key(1_000_000, 512, parse_memory("4G")) == "IVF4096_HNSW32,Flat"
    # 1e5 x 512 float32 = 205 MB > 100 MB: PQ256 codes + ids = 26.4 MB fit
    assert choose_index_key(100_000, 512, parse_memory("100M")) == "IVF1024_HNSW32,PQ256x8"
    # 30 MB: 1e5 * (256 + 8) = 26.4 MB + 2 MB centroids + 0.26 MB graph = 28.7 MB fits; 20 MB needs PQ128
    assert choose_index_key(100_000, 512, parse_memory("20M")) == "IVF1024_HNSW32,PQ128x8"
    with pytest.raises(InputError, match="too small"):
        choose_index_key(100_000, 512, parse_memory("1M"))
    assert parse_memory("1.5K") == 1536 and parse_memory("2g") == 2 * 1024 ** 3
    with pytest.raises(InputError, match="not a memory size"):
        parse_memory("lots")


@dataclass
class NoisyRowModel:
    """Stands in for a LoadedModel: text 'row:<i>' -> gallery row i plus fixed noise, normalised."""

    gallery: np.ndarray
    model_name: str = "irkit-tiny"
    weights_id: str = "sha256:abc"

    @property
    def embed_dim(self) -> int:
        return self.gallery.shape[1]

    def encode_texts(self, texts):
        rows = [int(t.split(":")[1]) for t in texts]
        noise = np.random.default_rng(7).normal(0, 0.3 / np.sqrt(self.embed_dim), (len(rows), self.embed_dim))
        x = self.gallery[rows] + noise
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ann_build_records_recall_and_search_uses_it(tmp_path, capsys, monkeypatch):
    gallery = clustered_rows(4000, 16, centres=40)
    folder = write_embedding_collection(tmp_path / "c", gallery, pd.DataFrame(
        {"image_path": [f"/g/{i}.jpg" for i in range(4000)]}), dtype="float32",
        info={"model_name": "irkit-tiny", "weights_id": "sha256:abc"})
    monkeypatch.setattr(irkit.cli, "_GROUPS", ("embed", "index"))
    assert irkit_main(["index", "build", "--collection", str(folder), "--queries", "300"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["index_key"] == "IVF64,Flat"  # 4*sqrt(4000) = 253 -> 256, capped at 4000/39 -> 64
    infos = json.loads((folder / "index" / "image.json").read_text())
    assert (folder / "index" / "image.index").is_file()
    assert infos["recall"]["value"] >= 0.95 and infos["recall"]["reached"] and infos["recall"]["k"] == 10
    assert infos["index_param"].startswith("nprobe=") and infos["nb vectors"] == 4000
    assert infos["recall"]["tuning"][-1]["index_param"] == infos["index_param"]

    # the recorded recall holds on other queries, measured here with faiss directly vs brute force
    index = faiss.read_index(str(folder / "index" / "image.index"))
    faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])
    model = NoisyRowModel(gallery)
    texts = [f"row:{i}" for i in range(0, 4000, 40)]
    queries = model.encode_texts(texts)
    _, found = index.search(queries, 10)
    truth = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")[:, :10]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])
    assert recall >= 0.9

    ann = search_collection(model, folder, texts, k=10)
    exact = search_collection(model, folder, texts, k=10, exact=True)
    assert ann[0]["search"] == f"ann:IVF64,Flat,{infos['index_param']}" and exact[0]["search"] == "exact"
    assert [h["row"] for h in exact[0]["results"]] == truth[0].tolist()
    assert [sorted(h["row"] for h in r["results"]) for r in ann] == [sorted(f) for f in found.tolist()]
    assert all(r["results"][0]["row"] == int(t.split(":")[1]) for r, t in zip(exact, texts))

    monkeypatch.setattr(irkit.cli.embed, "load_model", lambda args: model)
    assert irkit_main(["embed", "search", "--collection", str(folder), "--query", "row:5"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["search"].startswith("ann:IVF64,Flat")
    assert irkit_main(["embed", "search", "--collection", str(folder), "--query", "row:5", "--exact"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["search"] == "exact"


def test_held_out_queries_come_from_text_embeddings_when_present(tmp_path):
    gallery = clustered_rows(1500, 8, centres=10)
    folder = write_embedding_collection(tmp_path / "c", gallery, pd.DataFrame(
        {"image_path": [f"/g/{i}.jpg" for i in range(1500)]}), text_embeddings=clustered_rows(1500, 8, 10, seed=3),
        dtype="float16")
    infos = build_collection_index(folder, num_queries=100)
    assert infos["recall"]["query_source"] == "text_emb rows" and infos["recall"]["queries"] == 100
    assert infos["recall"]["reached"]


def test_stale_index_is_detected(tmp_path, capsys, monkeypatch):
    gallery = clustered_rows(1200, 8, centres=10)
    folder = write_shards(tmp_path / "c", [gallery[:600], gallery[600:]])
    build_collection_index(folder, num_queries=50)
    model = NoisyRowModel(gallery)
    assert search_collection(model, folder, ["row:3"], k=3)[0]["search"].startswith("ann:")
    changed = gallery[600:].copy()
    changed[[0, 1]] = changed[[1, 0]]  # same size and header, two rows swapped
    np.save(folder / "img_emb" / "img_emb_1.npy", changed)
    with pytest.raises(InputError, match=r"stale index: img_emb/img_emb_1.npy changed"):
        search_collection(model, folder, ["row:3"], k=3)
    assert search_collection(model, folder, ["row:3"], k=3, exact=True)[0]["search"] == "exact"
    monkeypatch.setattr(irkit.cli, "_GROUPS", ("embed", "index"))
    monkeypatch.setattr(irkit.cli.embed, "load_model", lambda args: model)
    assert irkit_main(["embed", "search", "--collection", str(folder), "--query", "row:3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stale index" in err and "image.json" in err
    # a new shard is stale too; --force rebuilds
    write_shards(tmp_path / "extra", [gallery[:10]])
    (tmp_path / "extra" / "img_emb" / "img_emb_0.npy").rename(folder / "img_emb" / "img_emb_2.npy")
    (tmp_path / "extra" / "metadata" / "metadata_0.parquet").rename(folder / "metadata" / "metadata_2.parquet")
    with pytest.raises(InputError, match=r"stale index: built for shards"):
        search_collection(model, folder, ["row:3"], k=3)
    assert irkit_main(["index", "build", "--collection", str(folder), "--queries", "50", "--force"]) == 0
    capsys.readouterr()
    assert search_collection(model, folder, ["row:3"], k=3)[0]["search"].startswith("ann:")


@pytest.mark.parametrize("extra, message", [
    (["--index-key", "Bogus12"], "field 'index-key': faiss cannot build index key 'Bogus12'"),
    (["--max-memory", "1K"], "field 'max-memory': 1024 bytes is too small"),
    (["--max-memory", "lots"], "field 'max-memory': 'lots' is not a memory size"),
    (["--index-key", "Flat", "--max-memory", "5K"], "index key 'Flat' needs about"),
])
def test_bad_build_inputs_are_one_line(tmp_path, capsys, monkeypatch, extra, message):
    folder = write_shards(tmp_path / "c", [unit_rows(300, 8)])
    monkeypatch.setattr(irkit.cli, "_GROUPS", ("index",))
    assert irkit_main(["index", "build", "--collection", str(folder), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (folder / "index").exists()


def test_missing_collection_and_existing_index_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(irkit.cli, "_GROUPS", ("index",))
    assert irkit_main(["index", "build", "--collection", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "embedding collection folder not found" in err
    folder = write_shards(tmp_path / "c", [unit_rows(300, 8)])
    assert irkit_main(["index", "build", "--collection", str(folder), "--queries", "20"]) == 0
    capsys.readouterr()
    assert irkit_main(["index", "build", "--collection", str(folder)]) == 2
    assert "an index already exists (pass --force" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_runs_at_quick_size():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bench_search.py"), "--quick"],
                            capture_output=True, text=True, timeout=900,
                            env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    match = re.fullmatch(r"ann/exact qps ratio: (\d+\.\d) at recall@10 (\d\.\d{3})", lines[-1])
    assert match, lines[-1]
    report = json.loads("\n".join(lines[:-1]))
    assert report["exact_streamed_equals_in_memory"] is True
    assert float(match.group(2)) == pytest.approx(report["ann_search"]["recall_at_10"], abs=1e-3)
    assert float(match.group(1)) == pytest.approx(report["ann_search"]["qps"] / report["exact_batched"]["qps"],
                                                  abs=0.051)
