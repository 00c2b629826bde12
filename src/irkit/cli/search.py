"""``irkit search``: one text or composed query against an embedding collection (prints JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from irkit.cli.app import parse_method_checkpoints, parse_method_options
from irkit.cli.common import add_model_arguments, cache_dir, load_model, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="a text or composed query (reference image + text) against a collection (JSON)",
        description="Answers one query over a collection written by `irkit embed images`: a text query "
                    "(--text alone) ranks the stored image embeddings by cosine similarity; a composed query "
                    "(--image FILE or --reference NAME, plus --text as the modification) is answered by a "
                    "registered CIR method (--method). Prints the top-k ids (collection rows), image names, "
                    "paths and scores as JSON. The collection's ANN index (`irkit index build`) answers where "
                    "it applies, unless --exact.")
    add_model_arguments(parser)
    parser.add_argument("--collection", type=Path, required=True,
                        help="collection folder written by `irkit embed images` (same model options)")
    parser.add_argument("--text", required=True,
                        help="the query text; with a reference image, the modification (may be empty: '')")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--image", type=Path, default=None,
                           help="reference image file for a composed query (any image, inside the collection "
                                "or not)")
    reference.add_argument("--reference", default=None, metavar="NAME",
                           help="reference for a composed query: a collection image by its image_name "
                                "(or its row number); it is left out of its own results")
    parser.add_argument("--method", default="image-text-sum",
                        help="registered CIR method answering a composed query (irkit cir methods lists them)")
    parser.add_argument("--method-checkpoint", default=None, metavar="PATH",
                        help="the trained part of --method (phi, fusion head, ...)")
    parser.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra option of --method (repeatable)")
    parser.add_argument("-k", type=positive_int, default=10, help="results per query")
    parser.add_argument("--exact", action="store_true",
                        help="exact search even when the collection has an ANN index")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/irkit"),
                        help="embedding cache for the reference image; 'none' disables it")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    from irkit.embeddings import num_threads
    from irkit.workflows.search_app import open_collection_search, reference_row

    torch.set_num_threads(num_threads())
    composed = args.image is not None or args.reference is not None
    methods = [args.method] if composed else []
    checkpoints = parse_method_checkpoints([f"{args.method}={args.method_checkpoint}"]) \
        if composed and args.method_checkpoint else {}
    options = parse_method_options([f"{args.method}:{item}" for item in args.method_option]) if composed else {}
    search = open_collection_search(args.collection, load_model(args), methods=methods, checkpoints=checkpoints,
                                    options=options, cache_dir=cache_dir(args), exact=args.exact)
    if not composed:
        hits = search.text_query(args.text, k=args.k)
        query = {"text": args.text}
    elif args.image is not None:
        hits = search.composed_query(args.text, args.method, k=args.k, upload_id=search.add_upload(args.image))
        query = {"text": args.text, "image": str(args.image), "method": args.method}
    else:
        row = reference_row(search, args.reference)
        hits = search.composed_query(args.text, args.method, k=args.k, reference_row=row)
        query = {"text": args.text, "reference": search.names[row], "reference_row": row, "method": args.method}
    print(json.dumps({"query": query, "search": search.search_description,
                      "results": [hit.to_json() for hit in hits]}))
    return 0
