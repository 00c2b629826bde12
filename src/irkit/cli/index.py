"""``irkit index build``: an approximate (FAISS) index inside a collection folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from irkit.cli.common import positive_int


def _recall(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got '{text}'") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got '{text}'")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="approximate-nearest-neighbour index of a collection")
    group = parser.add_subparsers(dest="index_command", required=True)
    build = group.add_parser(
        "build", help="build <collection>/index/image.index + image.json (FAISS, sized to --max-memory)",
        description="Chooses the FAISS index by collection size and --max-memory (autofaiss's rules), trains "
                    "it on a sample, fills it shard by shard, tunes nprobe/efSearch until recall@k against "
                    "exact search on held-out queries reaches --recall, and records all of it in image.json. "
                    "`irkit embed search` uses the index when present (--exact forces exact search).")
    build.add_argument("--collection", type=Path, required=True, help="collection folder (clip-retrieval layout)")
    build.add_argument("--max-memory", default="4G", help="index memory budget, e.g. 4G, 512M (default 4G)")
    build.add_argument("--index-key", default=None,
                       help="faiss.index_factory key to use instead of the sizing rule (e.g. IVF1024,Flat)")
    build.add_argument("-k", type=positive_int, default=10, help="k of the recall@k measured at build time")
    build.add_argument("--recall", type=_recall, default=0.95, help="recall@k target for the tuning (default 0.95)")
    build.add_argument("--queries", type=positive_int, default=1000, help="held-out queries for the recall")
    build.add_argument("--force", action="store_true", help="replace an existing index")
    build.set_defaults(func=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from irkit.collection import build_collection_index

    infos = build_collection_index(args.collection, max_memory=args.max_memory, index_key=args.index_key,
                                   k=args.k, recall_target=args.recall, num_queries=args.queries, force=args.force)
    summary = {key: infos[key] for key in ("index_key", "index_param", "size in bytes", "nb vectors")}
    summary.update(recall_at_k=infos["recall"]["value"], k=infos["recall"]["k"],
                   recall_reached=infos["recall"]["reached"], build_seconds=infos["build"]["seconds"],
                   index=str(Path(args.collection) / "index"))
    print(json.dumps(summary))
    if not infos["recall"]["reached"]:
        print(f"irkit: warning: recall@{infos['recall']['k']} {infos['recall']['value']} is below the target "
              f"{infos['recall']['target']} even at {infos['index_param']} (raise --max-memory for a finer index)",
              file=sys.stderr)
    return 0
