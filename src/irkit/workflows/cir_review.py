"""The CIR notebooks' helpers: demo data for a benchmark, one method reviewed (metrics, a
result grid), with LinCIR's phi trained on the fly when asked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from irkit.benchmarks import benchmark_of, get_benchmark, list_benchmarks
from irkit.cir.context import CIRContext
from irkit.cir.evaluate import load_cir_splits, run_method
from irkit.cir.registry import create_method, method_options
from irkit.cir.training import TrainingConfig, phi_validator, open_run
from irkit.data.records import CIRSplit
from irkit.errors import InputError
from irkit.io import atomic_write_json


def ensure_cir_demo(data_root: Path | str, dataset: str, scale: str = "tiny",
                    seed: int = 0) -> tuple[Path, Optional[Path]]:
    """``(dataset root, LinCIR caption file or None)``; generates the demo data (the dataset
    and, for CIRCO, CIRR's training captions) unless ``data_root`` already holds the dataset
    (demo data already there is verified against its manifest; damaged data is regenerated)."""
    benchmark = get_benchmark(dataset)
    if benchmark.kind != "cir":
        raise InputError(f"{dataset!r} is not a composed-retrieval benchmark; expected one of "
                         f"{list_benchmarks('cir')}", field="dataset")
    data_root = Path(data_root)
    from irkit.data.demo import verify_demo

    verify_demo(data_root, [dataset, *benchmark.demo_needs])  # a damaged demo dataset is regenerated
    root = benchmark.dataset_root(data_root)
    if not benchmark.has_layout(root):
        from irkit.data.demo import generate_demo

        needed = [dataset, *benchmark.demo_needs]
        generate_demo(data_root, seed=seed, scale=scale,
                      datasets=[d for d in needed if not (data_root / d).is_dir()], progress=False)
        root = data_root / dataset
    if benchmark.demo_caption_file is None:
        return root, None
    captions = data_root / "captions" / benchmark.demo_caption_file
    return root, captions if captions.is_file() else None


@dataclass
class CIRReview:
    """One evaluated method on one benchmark split: metrics plus the top rankings to show."""

    method: str
    splits: list[CIRSplit]
    rankings: list[dict[str, list[str]]]  # per split: query id -> top gallery ids (protocol applied)
    metrics: dict[str, Any]
    phi_run: Optional[Path] = None


def review_cir_method(ctx: CIRContext, dataset: str, root: Path | str, method: str, split: str = "val",
                      method_checkpoint: Optional[Path | str] = None, include_shared_concept: bool = False,
                      run_dir: Optional[Path | str] = None, lincir_captions: Optional[Path | str] = None,
                      lincir_steps: int = 0, top_k: int = 10, **loader_options: Any) -> CIRReview:
    """Evaluate ``method`` on ``dataset``/``split``; write ``metrics.json`` (with the backbone's
    resolved ``precision``, which phi training uses too) into ``run_dir``.

    For ``lincir`` without ``method_checkpoint`` and with ``lincir_captions`` and
    ``lincir_steps > 0``, phi is first trained from those captions (text only) into
    ``run_dir/phi`` (validated on this split, best checkpoint used).
    """
    splits = load_cir_splits(dataset, root, split, **loader_options)
    phi_run = None
    if method == "lincir" and method_checkpoint is None and lincir_captions is not None and lincir_steps > 0:
        from irkit.methods.lincir import read_captions
        from irkit.workflows.cir import train_phi

        if run_dir is None:
            raise InputError("training phi needs a run_dir to keep its run folder", field="run_dir")
        config = TrainingConfig(steps=lincir_steps, batch_size=64, validate_every=max(1, lincir_steps // 5),
                                include_shared_concept=include_shared_concept,
                                precision=ctx.loaded.precision)  # the backbone's, resolved for its device
        validator = phi_validator(ctx, "lincir", dataset, root, split, include_shared_concept, **loader_options)
        run = open_run(run_dir, "phi", {"method": "lincir", "captions": lincir_captions, **config.to_params()})
        try:
            result = train_phi("lincir", ctx.loaded, run, config, captions=read_captions(lincir_captions),
                               validator=validator)
        finally:
            run.close()
        method_checkpoint, phi_run = result.best_checkpoint, run.path
    instance = create_method(method, **method_options(method, method_checkpoint, include_shared_concept))
    ran = run_method(instance, ctx, splits, include_shared_concept)
    metrics = ran.metrics
    rankings = [{q: ids[:top_k] for q, ids in r.items()} for r in ran.rankings]
    if run_dir is not None:
        atomic_write_json(Path(run_dir) / "metrics.json", {**metrics, "precision": ctx.loaded.precision}, indent=2)
    return CIRReview(method, list(splits), rankings, metrics, phi_run)


def review_grid(review: CIRReview, num_queries: int = 4, k: int = 5, split_index: int = 0):
    """Figure: reference image + modification text, then the top-``k`` retrieved images
    (green = relevant, red = not), for ``num_queries`` queries spread over the split."""
    from irkit.viz import retrieval_grid

    split, rankings = review.splits[split_index], review.rankings[split_index]
    benchmark = benchmark_of(split)
    step = max(1, len(split.queries) // max(1, num_queries))
    picked = split.queries[::step][:num_queries]
    return retrieval_grid(
        [" / ".join(q.captions) for q in picked],
        [[split.image_path(benchmark.candidate_image(q, i)) for i in rankings[q.query_id][:k]] for q in picked],
        relevant=[{split.image_path(i) for i in (q.ground_truths or ((q.target,) if q.target else ()))}
                  for q in picked],
        query_images=[split.image_path(q.reference) for q in picked],
        k=k,
    )
