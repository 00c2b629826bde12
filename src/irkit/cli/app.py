"""``irkit app``: a local web page to search a collection by text or by a composed query."""

from __future__ import annotations

import argparse
from pathlib import Path

from irkit.cli.common import add_model_arguments, cache_dir, load_model, parse_key_values, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "app", help="serve a local search page over a collection (text and composed queries)",
        description="Serves a web page on HOST:PORT (default 127.0.0.1, this machine only): type a text query, "
                    "or pick / upload a reference image and type a modification, see the top-k images with "
                    "their scores (cosine similarity), switch the CIR method, click a result to use it as the "
                    "next reference. Nothing is fetched from the network. Build the collection first with "
                    "`irkit embed images` and the same model options.")
    add_model_arguments(parser)
    parser.add_argument("--collection", type=Path, required=True,
                        help="collection folder written by `irkit embed images` (clip-retrieval layout)")
    parser.add_argument("--method", action="append", default=None, metavar="NAME",
                        help="a registered CIR method served for composed queries (repeatable; default: "
                             "image-text-sum, image-only, text-only)")
    parser.add_argument("--method-checkpoint", action="append", default=[], metavar="NAME=PATH",
                        help="the trained part of a served method (repeatable), e.g. lincir=phi.pt")
    parser.add_argument("--method-option", action="append", default=[], metavar="NAME:KEY=VALUE",
                        help="an extra option of a served method (repeatable), e.g. searle-oti:steps=50")
    parser.add_argument("-k", type=positive_int, default=12, help="results shown per query at first (default 12)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: only this machine can open the page)")
    parser.add_argument("--port", type=port_number, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/irkit"),
                        help="embedding cache for reference images (default .cache/irkit); 'none' disables it")
    parser.set_defaults(func=_run)


def port_number(text: str) -> int:
    """argparse type: a TCP port 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1..65535, got {value}")
    return value


def parse_method_checkpoints(items: list[str]) -> dict[str, str]:
    """``["lincir=phi.pt"]`` -> ``{"lincir": "phi.pt"}``."""
    from irkit.errors import InputError

    checkpoints = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise InputError(f"--method-checkpoint {item!r} must look like NAME=PATH", field="method-checkpoint")
        checkpoints[name.strip()] = path.strip()
    return checkpoints


def parse_method_options(items: list[str]) -> dict[str, dict]:
    """``["searle-oti:steps=50"]`` -> ``{"searle-oti": {"steps": 50}}``."""
    from irkit.errors import InputError

    options: dict[str, dict] = {}
    for item in items:
        name, sep, rest = item.partition(":")
        if not sep or not name.strip():
            raise InputError(f"--method-option {item!r} must look like NAME:KEY=VALUE", field="method-option")
        options.setdefault(name.strip(), {}).update(
            parse_key_values([rest], "--method-option", underscore_keys=True))
    return options


def _run(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from irkit.embeddings import num_threads
    from irkit.web_app import create_app, serve
    from irkit.workflows.search_app import DEFAULT_APP_METHODS, open_collection_search

    torch.set_num_threads(num_threads())
    search = open_collection_search(
        args.collection, load_model(args), methods=args.method or DEFAULT_APP_METHODS,
        checkpoints=parse_method_checkpoints(args.method_checkpoint),
        options=parse_method_options(args.method_option), cache_dir=cache_dir(args))
    with tempfile.TemporaryDirectory(prefix="irkit-app-uploads-") as uploads:
        app = create_app(search, Path(uploads), default_k=args.k)
        serve(app, args.host, args.port,
              on_start=f"irkit app: {search.size} images, methods {', '.join(search.methods)}; "
                       f"open http://{args.host}:{args.port}/ (Ctrl-C stops)")
    return 0
