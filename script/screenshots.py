"""Take the README's screenshots with headless Chromium (Debian's chromium, driven by Playwright).

* ``report.png``: the run report of a run folder (``irkit report``), top of the page;
* ``app.png``: the search app over a collection, after a text query.

Usage: python script/screenshots.py --run RUN_DIR --collection C [model options] --out DIR
(``bash script/screenshots.sh`` prepares the run, the demo collection and the model).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="run folder whose report is shown")
    parser.add_argument("--collection", type=Path, required=True, help="collection folder searched in the app")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights of the model that built it")
    parser.add_argument("--model", default="irkit-tiny", help="open_clip model name (default irkit-tiny)")
    parser.add_argument("--query", default="This is a red Ford Truck.", help="text query typed into the app")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.png and app.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium binary")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from irkit.models import create_model
    from irkit.run_report import write_run_report
    from irkit.web_app import BackgroundServer, create_app
    from irkit.workflows.search_app import open_collection_search

    args.out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="irkit-screenshots-"))
    run_copy = staging / args.run.resolve().name  # the run's text files only: no weights, no old screenshots
    run_copy.mkdir()
    for path in args.run.iterdir():
        if path.is_file() and path.suffix in (".ipynb", ".json", ".jsonl", ".txt", ".log"):
            shutil.copy2(path, run_copy / path.name)
    report = write_run_report(run_copy)
    search = open_collection_search(args.collection, create_model(args.model, checkpoint=args.checkpoint),
                                    cache_dir=".cache/irkit")
    with tempfile.TemporaryDirectory() as uploads, sync_playwright() as playwright:
        server = BackgroundServer(create_app(search, Path(uploads), default_k=10))
        url = server.start()
        browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(report.resolve().as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(args.out / "report.png"))

            page = browser.new_page(viewport={"width": 1200, "height": 760})
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]")
            page.fill("#query-text", args.query)
            page.click("#search-button")
            page.wait_for_function("() => document.getElementById('status').textContent.startsWith('text query')")
            page.wait_for_function("() => Array.from(document.querySelectorAll('#results img'))"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            page.screenshot(path=str(args.out / "app.png"))
        finally:
            browser.close()
            server.stop()
            shutil.rmtree(staging, ignore_errors=True)
    print(args.out / "report.png", args.out / "app.png")


if __name__ == "__main__":
    main()
