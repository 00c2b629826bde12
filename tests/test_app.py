"""The search app (``irkit app``): the query workflow on hand-worked embeddings and on a real tiny
collection (checked against ``irkit embed search``'s code and a numpy recomputation), bad input,
the HTTP layer, and the page in a real headless Chromium (text query, click-to-reference,
composed query, upload)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pytest

from browser_fixtures import IMAGE_WIDTHS_JS, browser, guarded_page, save_screenshot
from irkit.cir.context import CIRContext
from irkit.cli import main as irkit_main
from irkit.collection import embed_images_to_collection, search_collection, write_embedding_collection
from irkit.errors import InputError
from irkit.workflows.search_app import CollectionSearch, open_collection_search

# Hand-worked gallery: four unit vectors in 2-D.
GALLERY = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.96, 0.28]], np.float32)
TEXTS = {"east": np.array([1.0, 0.0], np.float32)}


@dataclass
class TableModel:
    """A stand-in backbone with the identity the collection records (no weights)."""

    model_name: str = "table"
    weights_id: str = "table:0"
    embed_dim: int = 2
    transform_config: Any = None


class TableContext(CIRContext):
    """Image embeddings looked up by file name, text embeddings from :data:`TEXTS`."""

    def image_embeddings(self, split, image_ids: Sequence[str]) -> np.ndarray:
        return np.stack([GALLERY[int(Path(split.image_path(i)).stem)] for i in image_ids])

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([TEXTS[t] for t in texts])


@pytest.fixture
def table_search(tmp_path: Path) -> CollectionSearch:
    folder = write_embedding_collection(
        tmp_path / "table", GALLERY, pd.DataFrame({"image_path": [f"/g/{i}.png" for i in range(4)],
                                                   "image_name": [f"{i}.png" for i in range(4)]}),
        dtype="float32", info={"model_name": "table", "weights_id": "table:0"})
    from irkit.cir.registry import create_method

    methods = {name: create_method(name) for name in ("image-text-sum", "image-only", "text-only")}
    return CollectionSearch(folder, TableContext(TableModel()), methods)


def rows_and_scores(hits) -> tuple[list[int], list[float]]:
    return [h.row for h in hits], [h.score for h in hits]


def test_queries_on_hand_worked_embeddings(table_search: CollectionSearch) -> None:
    # text "east" = (1, 0): scores are the first coordinates 1, 0, 0.6, 0.96
    rows, scores = rows_and_scores(table_search.text_query("east", k=4))
    assert rows == [0, 3, 2, 1]
    np.testing.assert_allclose(scores, [1.0, 0.96, 0.6, 0.0], atol=1e-6)
    # reference row 1 = (0, 1) + "east": query (1, 1)/sqrt(2); row 1 itself is excluded
    rows, scores = rows_and_scores(table_search.composed_query("east", "image-text-sum", k=5, reference_row=1))
    assert rows == [2, 3, 0]
    np.testing.assert_allclose(scores, [1.4 / np.sqrt(2), 1.24 / np.sqrt(2), 1 / np.sqrt(2)], atol=1e-6)
    rows, scores = rows_and_scores(table_search.composed_query("east", "image-only", k=2, reference_row=1))
    assert rows == [2, 3]
    np.testing.assert_allclose(scores, [0.8, 0.28], atol=1e-6)
    rows, _ = rows_and_scores(table_search.composed_query("east", "text-only", k=3, reference_row=0))
    assert rows == [3, 2, 1]  # row 0 (score 1) is the reference: excluded
    hit = table_search.text_query("east", k=1)[0]
    assert (hit.name, hit.image_path) == ("0.png", Path("/g/0.png"))


def test_an_uploaded_reference_excludes_nothing(table_search: CollectionSearch, tmp_path: Path) -> None:
    from PIL import Image

    upload = tmp_path / "uploads" / "3.png"  # TableContext embeds it as GALLERY[3] = (0.96, 0.28)
    upload.parent.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(upload)
    upload_id = table_search.add_upload(upload)
    rows, scores = rows_and_scores(table_search.composed_query("", "image-only", k=2, upload_id=upload_id))
    assert rows == [3, 0]  # the collection's copy of the uploaded image comes first, then (1, 0)
    np.testing.assert_allclose(scores, [1.0, 0.96], atol=1e-6)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png: not a readable image"):
        table_search.add_upload(tmp_path / "broken.png")


def test_a_ranking_method_answers_without_scores(table_search: CollectionSearch) -> None:
    from irkit.cir.registry import RankingMethod

    class Reversed(RankingMethod):
        """Ranks the gallery in reverse row order."""

        def rank_split(self, ctx, split):
            return {q.query_id: list(reversed(split.gallery)) for q in split.queries}, None

    table_search.methods["reversed"] = Reversed()
    hits = table_search.composed_query("east", "reversed", k=3, reference_row=2)
    assert [(h.row, h.score) for h in hits] == [(3, None), (1, None), (0, None)]


def test_bad_queries_are_one_clear_error(table_search: CollectionSearch) -> None:
    with pytest.raises(InputError, match="field 'text': type a query text"):
        table_search.text_query("   ")
    with pytest.raises(InputError, match="field 'k': k must be a positive integer, got 0"):
        table_search.text_query("east", k=0)
    with pytest.raises(InputError, match="method 'lincir' is not served; choose one of image-text-sum"):
        table_search.composed_query("east", "lincir", reference_row=0)
    with pytest.raises(InputError, match="exactly one reference"):
        table_search.composed_query("east", "image-only")
    with pytest.raises(InputError, match=r"row 4 is not in the collection; expected 0..3"):
        table_search.composed_query("east", "image-only", reference_row=4)
    with pytest.raises(InputError, match="unknown upload"):
        table_search.composed_query("east", "image-only", upload_id="upload-feed")


def test_a_collection_of_other_weights_is_refused(tmp_path: Path) -> None:
    folder = write_embedding_collection(tmp_path / "c", GALLERY, pd.DataFrame({"image_path": ["/a"] * 4}),
                                        info={"model_name": "table", "weights_id": "other:1"})
    with pytest.raises(InputError, match="weights_id 'other:1' but the query model has 'table:0'"):
        CollectionSearch(folder, TableContext(TableModel()), {})


# ---------------------------------------------------------------- a real tiny collection

@pytest.fixture(scope="module")
def demo_collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    """(irkit-tiny random-init model, collection of 16 demo FashionIQ images, embedding cache)."""
    from irkit.data.demo import generate_demo
    from irkit.embeddings import collect_image_paths
    from irkit.models import create_model

    root = tmp_path_factory.mktemp("app")
    generate_demo(root / "demo", scale="tiny", datasets="fashioniq", workers=1, progress=False)
    images = root / "demo" / "fashioniq" / "images"
    loaded = create_model("irkit-tiny", random_init=True)
    embed_images_to_collection(loaded, collect_image_paths(images)[:16], root / "collection", num_workers=0,
                               dtype="float32", root=images)
    return loaded, root / "collection", root / "cache"


def test_real_collection_answers_as_embed_search_and_numpy(demo_collection) -> None:
    from irkit.collection import read_embedding_collection
    from irkit.embeddings import encode_image_files

    loaded, folder, cache = demo_collection
    search = open_collection_search(folder, loaded, cache_dir=cache)
    hits = search.text_query("a red dress with long sleeves", k=5)
    (expected,) = search_collection(loaded, folder, ["a red dress with long sleeves"], k=5)
    assert [h.row for h in hits] == [r["row"] for r in expected["results"]]
    np.testing.assert_allclose([h.score for h in hits], [r["score"] for r in expected["results"]], atol=1e-5)

    gallery, metadata = read_embedding_collection(folder)
    reference = encode_image_files(loaded, [metadata["image_path"][3]], num_workers=0)[0]
    text = loaded.encode_texts(["make it blue"])[0]
    query = (reference + text) / np.linalg.norm(reference + text)
    expected_scores = gallery @ query
    expected_scores[3] = -np.inf  # the reference is never a result
    hits = search.composed_query("make it blue", "image-text-sum", k=4, reference_row=3)
    assert 3 not in [h.row for h in hits]
    np.testing.assert_allclose([h.score for h in hits], expected_scores[[h.row for h in hits]], atol=1e-5)
    np.testing.assert_allclose([h.score for h in hits], np.sort(expected_scores)[::-1][:4], atol=1e-5)


def test_a_trained_method_answers_composed_queries(demo_collection, tmp_path: Path) -> None:
    """LinCIR with a phi checkpoint, served by name: its query embedding of the reference and the
    modification, ranked against the stored gallery embeddings, reference excluded."""
    import dataclasses

    import torch

    from irkit.cir.registry import create_method
    from irkit.collection import read_embedding_collection
    from irkit.data.collection import load_collection_split
    from irkit.data.records import CIRQuery
    from irkit.models.phi import Phi
    from irkit.models.pseudo_token import embed_dim, token_width

    loaded, folder, cache = demo_collection
    torch.manual_seed(0)
    phi = tmp_path / "phi.pt"
    torch.save({"Phi": Phi(embed_dim(loaded.model), token_width(loaded.model)).state_dict()}, phi)
    search = open_collection_search(folder, loaded, methods=["lincir"], checkpoints={"lincir": str(phi)})
    hits = search.composed_query("with short sleeves", "lincir", k=3, reference_row=5)

    split = load_collection_split(folder)
    split = dataclasses.replace(split, queries=[CIRQuery("q", split.gallery[5], ("with short sleeves",))])
    query = create_method("lincir", checkpoint=str(phi)).query_embeddings(CIRContext(loaded, num_workers=0), split)[0]
    gallery, _ = read_embedding_collection(folder)
    expected = gallery @ query
    expected[5] = -np.inf
    assert 5 not in [h.row for h in hits]
    np.testing.assert_allclose([h.score for h in hits], np.sort(expected)[::-1][:3], atol=1e-5)
    np.testing.assert_allclose([h.score for h in hits], expected[[h.row for h in hits]], atol=1e-5)


def test_model_options_must_match_the_collection(demo_collection) -> None:
    from irkit.models import create_model

    _, folder, cache = demo_collection
    with pytest.raises(InputError, match="expected the same --transform"):
        open_collection_search(folder, create_model("irkit-tiny", transform="center", random_init=True),
                               cache_dir=cache)
    with pytest.raises(InputError, match=r"method\(s\) \['lincir'\] that are not served"):
        open_collection_search(folder, demo_collection[0], checkpoints={"lincir": "phi.pt"})


def test_cli_app_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from irkit.cli import build_parser

    defaults = build_parser().parse_args(["app", "--collection", str(tmp_path)])
    assert (defaults.host, defaults.port, defaults.method) == ("127.0.0.1", 7860, None)  # this machine only
    assert irkit_main(["app", "--collection", str(tmp_path / "none"), "--cache-dir", "none", "--random-init"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "embedding collection folder not found" in err[0]
    with pytest.raises(SystemExit):
        irkit_main(["app", "--collection", str(tmp_path), "--port", "70000", "--random-init"])
    assert "expected a port number 1..65535, got 70000" in capsys.readouterr().err


# ---------------------------------------------------------------- HTTP and browser

@pytest.fixture(scope="module")
def app_url(demo_collection, tmp_path_factory: pytest.TempPathFactory):
    from irkit.web_app import BackgroundServer, create_app

    loaded, folder, cache = demo_collection
    search = open_collection_search(folder, loaded, cache_dir=cache)
    server = BackgroundServer(create_app(search, tmp_path_factory.mktemp("uploads"), default_k=6))
    url = server.start()
    assert url.startswith("http://127.0.0.1:")
    yield url
    server.stop()


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_answers_and_rejects(app_url: str, demo_collection) -> None:
    loaded, folder, _ = demo_collection
    status, body = post(app_url + "/api/search", json.dumps({"text": "a blue shirt", "k": 3}).encode())
    (expected,) = search_collection(loaded, folder, ["a blue shirt"], k=3)
    assert status == 200 and body["mode"] == "text"
    assert [r["row"] for r in body["results"]] == [r["row"] for r in expected["results"]]
    assert body["results"][0]["image"] == f"/image/{expected['results'][0]['row']}"
    status, body = post(app_url + "/api/search", json.dumps({"text": "x", "k": 0}).encode())
    assert status == 400 and body == {"error": "field 'k': k must be a positive integer, got 0"}
    status, body = post(app_url + "/api/search", json.dumps({"text": "x", "reference": {"path": "/etc"}}).encode())
    assert status == 400 and "reference must be null" in body["error"]
    status, body = post(app_url + "/api/upload", b"not an image", "application/octet-stream")
    assert status == 400 and "is not a readable image file" in body["error"]
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(app_url + "/image/999", timeout=30)
    assert error.value.code == 400


@pytest.fixture(scope="module")
def chromium():
    yield from browser()


def result_rows(page) -> list[int]:
    return [int(r) for r in page.eval_on_selector_all("#results figure", "fs => fs.map(f => f.dataset.row)")]


def wait_for_results(page, count: int) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('#results figure img').length === n && "
        "Array.from(document.querySelectorAll('#results img')).every(i => i.complete && i.naturalWidth > 0)",
        arg=count, timeout=60000)


def test_app_in_chromium(chromium, app_url: str, demo_collection) -> None:
    loaded, folder, _ = demo_collection
    blocked: list[str] = []
    page = guarded_page(chromium, [app_url + "/"], blocked, width=1200, height=800)
    page.goto(app_url + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#method option").all_inner_texts() == ["image-text-sum", "image-only", "text-only"]

    # a text query: k images, in the order of irkit embed search
    page.fill("#k", "5")
    page.fill("#query-text", "a red dress")
    page.click("#search-button")
    wait_for_results(page, 5)
    (expected,) = search_collection(loaded, folder, ["a red dress"], k=5)
    assert result_rows(page) == [r["row"] for r in expected["results"]]
    assert all(w > 0 for w in page.evaluate(IMAGE_WIDTHS_JS, "#results img"))
    assert page.inner_text("#status").startswith("text query: 5 results")

    # clicking a result makes it the reference
    second = page.locator("#results figure").nth(1)
    chosen_row = result_rows(page)[1]
    chosen_name = second.locator("img").get_attribute("alt")
    second.click()
    assert page.inner_text("#reference-name") == chosen_name
    page.wait_for_function("() => document.getElementById('reference-preview').naturalWidth > 0")

    # a composed query with a chosen method: k results, never the reference itself
    page.select_option("#method", "image-only")
    page.fill("#query-text", "make it longer")
    page.click("#search-button")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('composed')")
    wait_for_results(page, 5)
    rows = result_rows(page)
    assert chosen_row not in rows and len(set(rows)) == 5
    assert page.inner_text("#status") == "composed query (image-only): 5 results"
    save_screenshot(page, "app.png")

    # an uploaded reference image
    page.set_input_files("#upload", str(Path(search_collection(loaded, folder, ["x"], k=1)[0]["results"][0]
                                             ["image_path"])))
    page.wait_for_function("() => document.getElementById('reference-name').textContent.endsWith('(uploaded)')")
    page.select_option("#method", "image-text-sum")
    page.click("#search-button")
    page.wait_for_function("() => document.getElementById('status').textContent.startsWith('composed query "
                           "(image-text-sum)')")
    wait_for_results(page, 5)

    # a reference picked by name
    from irkit.collection import read_embedding_collection

    names = read_embedding_collection(folder)[1]["image_name"].tolist()
    page.fill("#pick-name", names[7])
    page.click("#pick-button")
    assert page.inner_text("#reference-name") == names[7]
    answers = int(page.get_attribute("#results", "data-answers"))
    page.click("#search-button")
    page.wait_for_function("n => Number(document.getElementById('results').dataset.answers) === n", arg=answers + 1)
    wait_for_results(page, 5)
    assert 7 not in result_rows(page)

    # an error is one line on the page, not a crash
    page.click("#clear-reference")
    page.fill("#query-text", "")
    page.click("#search-button")
    page.wait_for_function("() => document.getElementById('status').className === 'error'")
    assert page.inner_text("#status") == "field 'text': type a query text (it is empty)"
    assert blocked == []
    page.close()


def test_cli_search_text_and_composed_queries_exact_and_ann(demo_collection, tmp_path: Path, capsys) -> None:
    """``irkit search``: the printed rows and scores equal a numpy ranking of the stored gallery
    (text query; composed query by collection image name, reference left out; composed query by an
    image file, nothing left out); after ``irkit index build`` the same queries go through the ANN
    index (a Flat index at this size, so the same rows)."""
    import shutil

    from irkit.collection import read_embedding_collection
    from irkit.embeddings import encode_image_files

    loaded, folder, _ = demo_collection
    collection = tmp_path / "collection"
    shutil.copytree(folder, collection)  # index build writes into it
    gallery, metadata = read_embedding_collection(collection)
    common = ["--collection", str(collection), "--random-init", "--cache-dir", "none"]

    def run(*argv: str) -> dict:
        assert irkit_main(["search", *common, *argv]) == 0
        return json.loads(capsys.readouterr().out)

    def expected(scores: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
        rows = np.lexsort((np.arange(len(scores)), -scores))[:k]
        return rows.tolist(), scores[rows]

    text = loaded.encode_texts(["a red dress with long sleeves"])[0]
    reference = encode_image_files(loaded, [metadata["image_path"][3]], num_workers=0)[0]
    modification = loaded.encode_texts(["make it blue"])[0]
    composed = (reference + modification) / np.linalg.norm(reference + modification)
    without_reference = gallery @ composed
    without_reference[3] = -np.inf

    for search_kind in ("exact", "ann"):
        if search_kind == "ann":
            assert irkit_main(["index", "build", "--collection", str(collection)]) == 0
            capsys.readouterr()
        printed = run("--text", "a red dress with long sleeves", "-k", "5")
        assert printed["search"].startswith(search_kind)
        assert printed["query"] == {"text": "a red dress with long sleeves"}
        rows, scores = expected(gallery @ text, 5)
        assert [r["row"] for r in printed["results"]] == rows
        np.testing.assert_allclose([r["score"] for r in printed["results"]], scores, atol=1e-5)
        assert printed["results"][0]["image_path"] == str(metadata["image_path"][rows[0]])

        printed = run("--text", "make it blue", "--reference", str(metadata["image_name"][3]), "-k", "4")
        rows, scores = expected(without_reference, 4)
        assert printed["query"]["reference_row"] == 3 and [r["row"] for r in printed["results"]] == rows
        np.testing.assert_allclose([r["score"] for r in printed["results"]], scores, atol=1e-5)

        printed = run("--text", "make it blue", "--image", str(metadata["image_path"][3]), "-k", "4")
        rows, scores = expected(gallery @ composed, 4)  # an outside file: nothing is left out
        assert [r["row"] for r in printed["results"]] == rows
        np.testing.assert_allclose([r["score"] for r in printed["results"]], scores, atol=1e-5)

    assert irkit_main(["search", *common, "--text", "x", "--reference", "no-such-image.jpg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reference 'no-such-image.jpg' is neither an image name of the collection" in err[0]
