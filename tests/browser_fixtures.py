"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright.

``script/setup.sh --with-browser`` (run by ``script/test.sh``) installs the browser (``apt-get install chromium``) and Playwright comes
from requirements.txt; where either is missing the tests fail with a message saying so (never
skip). Pages may fetch only from the allowed prefixes; every other request is aborted and
recorded, so a test can assert that nothing went to the network.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pytest

CHROMIUM = Path(os.environ.get("IRKIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Set to a folder to save screenshots there (script/screenshots.sh sets it).
SCREENSHOT_ENV = "IRKIT_SCREENSHOT_DIR"
IMAGE_WIDTHS_JS = "sel => Array.from(document.querySelectorAll(sel)).map(i => i.complete ? i.naturalWidth : 0)"


def browser() -> Iterator[object]:
    """A launched headless Chromium (Playwright ``Browser``); fails clearly when it cannot start."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (bash script/setup.sh --with-browser does "
                    "`apt-get install -y chromium`) or point IRKIT_CHROMIUM at a Chromium binary")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -r requirements.txt (bash script/setup.sh)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def guarded_page(browser_: object, allowed: Sequence[str], blocked: list[str], width: int = 1200,
                 height: int = 900) -> object:
    """A new page whose requests outside ``allowed`` URL prefixes are aborted and appended to ``blocked``."""
    page = browser_.new_page(viewport={"width": width, "height": height})

    def route(request_route) -> None:
        url = request_route.request.url
        if any(url.startswith(prefix) for prefix in allowed):
            request_route.continue_()
        else:
            blocked.append(url)
            request_route.abort()

    page.route("**/*", route)
    return page


def save_screenshot(page: object, name: str, full_page: bool = False) -> Optional[Path]:
    """Save a screenshot as ``$IRKIT_SCREENSHOT_DIR/<name>`` when that variable is set."""
    folder = os.environ.get(SCREENSHOT_ENV)
    if not folder:
        return None
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    page.screenshot(path=str(tmp), full_page=full_page)
    shutil.move(tmp, path)
    return path
