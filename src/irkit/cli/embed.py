"""``irkit embed``: embed an image folder into a clip-retrieval collection, and search one by text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from irkit.cli.common import (
    add_encoding_arguments,
    add_model_arguments,
    cache_dir,
    image_reader,
    load_model,
    output_folder,
    positive_int,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("embed", help="embed images into a clip-retrieval collection; search it")
    group = parser.add_subparsers(dest="embed_command", required=True)

    images = group.add_parser(
        "images", help="embed an image folder (or a list file) into a collection folder",
        description="Writes clip-retrieval's layout: img_emb/img_emb_0.npy, metadata/metadata_0.parquet "
                    "(image_path, image_name) and irkit_collection.json; usable by autofaiss. Under "
                    "`torchrun --nproc_per_node N -m irkit embed images ...` each rank writes its own shard "
                    "img_emb_<rank>.npy into <out>.partial/ (re-running after a kill keeps finished shards).")
    add_model_arguments(images)
    images.add_argument("--images", type=Path, required=True,
                        help="image folder (recursive) or a text file with one image path per line")
    images.add_argument("--out", type=output_folder, required=True, help="new collection folder")
    add_encoding_arguments(images)
    images.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                        help="number type of the stored embeddings (img_emb/*.npy)")
    images.set_defaults(func=_run_images)

    search = group.add_parser("search", help="text -> image top-k over a collection (prints JSON; uses its ANN "
                                                   "index when present)")
    add_model_arguments(search)
    search.add_argument("--collection", type=Path, required=True,
                        help="collection folder written by `irkit embed images` (same --model and weights)")
    search.add_argument("--query", action="append", required=True, help="query text (repeatable)")
    search.add_argument("-k", type=positive_int, default=10, help="images returned per query")
    search.add_argument("--exact", action="store_true",
                        help="exact search even when the collection has an index (irkit index build)")
    search.set_defaults(func=_run_search)


def _run_images(args: argparse.Namespace) -> int:
    from irkit import distributed
    from irkit.collection import embed_images_to_collection
    from irkit.embeddings import collect_image_paths
    from irkit.sharded_embedding import embed_images_sharded

    distributed.init_process_group()  # under torchrun: one shard per rank (irkit.sharded_embedding)
    paths = collect_image_paths(args.images)
    loaded = load_model(args)
    root = args.images if args.images.is_dir() else args.images.parent
    embed = embed_images_sharded if distributed.is_distributed() else embed_images_to_collection
    out = embed(loaded, paths, args.out, cache_dir=cache_dir(args), batch_size=args.batch_size,
                num_workers=args.num_workers, dtype=args.dtype, root=root,
                reader=image_reader(args, exif_default=True))
    if distributed.is_main():
        print(json.dumps({"collection": str(out), "images": len(paths), "dim": loaded.embed_dim,
                          "model": loaded.model_name, "weights_id": loaded.weights_id,
                          "precision": loaded.precision, "processes": distributed.world_size()}))
    return 0


def _run_search(args: argparse.Namespace) -> int:
    from irkit.collection import search_collection

    loaded = load_model(args)
    print(json.dumps(search_collection(loaded, args.collection, args.query, k=args.k, exact=args.exact), indent=2,
                     ensure_ascii=False))
    return 0
