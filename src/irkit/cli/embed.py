"""``irkit embed``: embed an image folder into a clip-retrieval collection, and search one by text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every command that loads a CLIP backbone shares."""
    parser.add_argument("--model", default="irkit-tiny", help="any open_clip model name (default irkit-tiny)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", default=None, help="open_clip pretrained tag (or a local weights file)")
    weights.add_argument("--checkpoint", type=Path, default=None,
                         help="local checkpoint: open_clip_train .pt, state dict .pt/.pth/.bin or .safetensors")
    parser.add_argument("--transform", default="square", choices=["square", "targetpad", "center"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")


def load_model_from_args(args: argparse.Namespace) -> Any:
    """``irkit.models.create_model`` from the options of :func:`add_model_arguments`."""
    from irkit.models import create_model

    return create_model(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint,
                        transform=args.transform, device=args.device, precision=args.precision)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("embed", help="embed images into a clip-retrieval collection; search it")
    group = parser.add_subparsers(dest="embed_command", required=True)

    images = group.add_parser(
        "images", help="embed an image folder (or a list file) into a collection folder",
        description="Writes clip-retrieval's layout: img_emb/img_emb_0.npy, metadata/metadata_0.parquet "
                    "(image_path, image_name) and irkit_collection.json; usable by autofaiss.")
    add_model_arguments(images)
    images.add_argument("--images", type=Path, required=True,
                        help="image folder (recursive) or a text file with one image path per line")
    images.add_argument("--out", type=Path, required=True, help="new collection folder")
    images.add_argument("--cache-dir", type=Path, default=Path(".cache/irkit"),
                        help="embedding cache (default .cache/irkit); 'none' disables it")
    images.add_argument("--batch-size", type=int, default=64)
    images.add_argument("--num-workers", type=int, default=2, help="image decoding processes")
    images.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    images.set_defaults(func=_run_images)

    search = group.add_parser("search", help="text -> image top-k over a collection (prints JSON)")
    add_model_arguments(search)
    search.add_argument("--collection", type=Path, required=True)
    search.add_argument("--query", action="append", required=True, help="query text (repeatable)")
    search.add_argument("-k", type=int, default=10)
    search.set_defaults(func=_run_search)


def _run_images(args: argparse.Namespace) -> int:
    from irkit.collection import embed_images_to_collection
    from irkit.embeddings import collect_image_paths

    paths = collect_image_paths(args.images)
    loaded = load_model_from_args(args)
    cache_dir = None if str(args.cache_dir).lower() == "none" else args.cache_dir
    root = args.images if args.images.is_dir() else args.images.parent
    out = embed_images_to_collection(loaded, paths, args.out, cache_dir=cache_dir, batch_size=args.batch_size,
                                     num_workers=args.num_workers, dtype=args.dtype, root=root)
    print(json.dumps({"collection": str(out), "images": len(paths), "dim": loaded.embed_dim,
                      "model": loaded.model_name, "weights_id": loaded.weights_id}))
    return 0


def _run_search(args: argparse.Namespace) -> int:
    from irkit.collection import search_collection

    loaded = load_model_from_args(args)
    print(json.dumps(search_collection(loaded, args.collection, args.query, k=args.k), indent=2,
                     ensure_ascii=False))
    return 0
