"""The search app's web layer (``irkit app``): a small FastAPI page served by uvicorn on 127.0.0.1.

Thin on purpose: every query goes to :class:`irkit.workflows.search_app.CollectionSearch`. The page
(``irkit/resources/search_app.html``) carries its CSS and script inline and loads nothing from
the network; images come from this server. Routes:

* ``GET /`` the page; ``GET /api/info`` collection size, image names, methods, default k;
* ``POST /api/search`` JSON ``{"text", "k", "method", "reference": null | {"row": int} | {"upload": id}}``
  -> ``{"mode", "results": [{"rank", "row", "name", "score", "image"}]}``; no reference = text query;
* ``POST /api/upload`` raw image bytes -> ``{"upload": id, "image": url}``;
* ``GET /image/{row}``, ``GET /upload/{id}`` the image files (only collection rows and uploads).

Bad input answers 400 with ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from irkit.errors import InputError
from irkit.workflows.search_app import CollectionSearch, check_k

#: The largest upload accepted, in bytes.
MAX_UPLOAD_BYTES = 20 << 20
#: At most this many image names are sent to the page for its picker.
MAX_PICKER_NAMES = 5000


def page_html() -> str:
    """The app's single page (HTML with inline CSS and script)."""
    return resources.files("irkit").joinpath("resources/search_app.html").read_text(encoding="utf-8")


def create_app(search: CollectionSearch, upload_dir: Path, default_k: int = 12) -> Any:
    """The FastAPI application answering with ``search``; uploads are stored in ``upload_dir``."""
    app = FastAPI(title="irkit search", docs_url=None, redoc_url=None, openapi_url=None)
    upload_dir = Path(upload_dir)
    upload_dir.mkdir(parents=True, exist_ok=True)

    @app.exception_handler(InputError)
    async def input_error(request: Request, error: InputError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    def hit_json(hit: Any) -> dict[str, Any]:
        return {"rank": hit.rank, "row": hit.row, "name": hit.name, "score": hit.score, "image": f"/image/{hit.row}"}

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page_html()

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {"collection": search.folder.name, "size": search.size, "methods": list(search.methods),
                "k": default_k, "names": search.names[:MAX_PICKER_NAMES]}

    @app.post("/api/search")
    def run_search(body: dict[str, Any]) -> dict[str, Any]:
        k = check_k(body.get("k", default_k))
        reference = body.get("reference")
        text = body.get("text", "")
        if reference is None:
            return {"mode": "text", "results": [hit_json(h) for h in search.text_query(text, k)]}
        if not isinstance(reference, dict) or len(reference) != 1 or not ({"row", "upload"} & set(reference)):
            raise InputError('reference must be null, {"row": <int>} or {"upload": <id>}', field="reference")
        hits = search.composed_query(text, str(body.get("method", "")), k, reference_row=reference.get("row"),
                                     upload_id=reference.get("upload"))
        return {"mode": "composed", "results": [hit_json(h) for h in hits]}

    @app.post("/api/upload")
    async def upload(request: Request) -> dict[str, Any]:
        data = await request.body()
        if not data:
            raise InputError("the upload is empty; expected the bytes of an image file", field="upload")
        if len(data) > MAX_UPLOAD_BYTES:
            raise InputError(f"the upload has {len(data)} bytes; at most {MAX_UPLOAD_BYTES} are accepted",
                             field="upload")
        path = upload_dir / hashlib.sha256(data).hexdigest()
        if not path.exists():
            tmp = path.with_suffix(".part")
            tmp.write_bytes(data)
            tmp.replace(path)
        try:
            upload_id = search.add_upload(path)
        except InputError:
            path.unlink(missing_ok=True)
            raise InputError(f"the upload ({len(data)} bytes) is not a readable image file; expected PNG, JPEG, "
                             "or another format Pillow reads", field="upload") from None
        return {"upload": upload_id, "image": f"/upload/{upload_id}"}

    @app.get("/image/{row}")
    def image(row: int) -> FileResponse:
        path = search.image_path(row)
        if not path.is_file():
            raise InputError("image file not found", path=path)
        return FileResponse(path)

    @app.get("/upload/{upload_id}")
    def uploaded(upload_id: str) -> FileResponse:
        return FileResponse(search.upload_path(upload_id))

    return app


class BackgroundServer:
    """A uvicorn server on its own thread (tests, screenshots): ``url`` once started, ``stop()``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.host = host

    def start(self, timeout: float = 20.0) -> str:
        """Start serving; returns the base URL (``http://host:port``)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app server did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://{self.host}:{port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def serve(app: Any, host: str = "127.0.0.1", port: int = 7860, on_start: Optional[str] = None) -> None:
    """Serve ``app`` in the foreground until interrupted (Ctrl-C)."""
    import uvicorn

    if on_start:
        print(on_start, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
