"""What every row of the CIR comparison table shares: data, CLIP model, folders, budgets."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from irkit.io import atomic_write_json, read_json

#: The CIR benchmarks of the table, in column order.
BENCHMARKS = ("fashioniq", "cirr", "circo")
#: Table columns (metric keys), in order: FashionIQ average over dress/shirt/toptee, CIRR val
#: (reference removed; Rs@1 on the img_set subset), CIRCO val mAP@10.  Units: fraction in [0, 1].
TABLE_COLUMNS = ("fashioniq_R@10", "fashioniq_R@50", "cirr_R@1", "cirr_R@5", "cirr_Rs@1", "circo_mAP@10")


@dataclass
class CIRBenchSetup:
    """Inputs shared by every method of the CIR table.

    ``data_root`` holds ``fashioniq/``, ``cirr/``, ``circo/`` (published layouts) and, for demo
    data, ``captions/``. ``clip_checkpoint`` / ``pretrained`` select the CLIP weights exactly as
    ``irkit.models.create_model`` does; with neither, ``random_init=True`` must ask for random
    weights explicitly. Each stage writes only under ``out_dir / <stage>``.
    ``budgets`` holds per-stage step/epoch counts (scale-dependent; see ``cir_table``).
    ``precision``: the :mod:`irkit.precision` setting of the CLIP model, CLIP training and every
    trainer (``auto`` resolves on the CPU the table runs on).
    """

    data_root: Path
    out_dir: Path
    model: str = "irkit-tiny"
    clip_checkpoint: Optional[Path] = None
    pretrained: Optional[str] = None
    random_init: bool = False
    cache_dir: Path = Path(".cache/irkit")
    scale: str = "full"
    seed: int = 0
    workers: int = 2
    budgets: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"         # irkit.precision setting of every model, encoder and trainer

    def stage_dir(self, stage: str) -> Path:
        """``out_dir / stage`` (created)."""
        path = self.out_dir / stage
        path.mkdir(parents=True, exist_ok=True)
        return path


def table_row(method: str, group: str, metrics: dict[str, float], notes: str = "") -> dict[str, Any]:
    """One table row: ``method``, ``group`` (baseline | zero-shot | fusion | re-ranking), the
    ``TABLE_COLUMNS`` present in ``metrics`` (missing ones None) and free-text ``notes``."""
    row: dict[str, Any] = {"method": method, "group": group}
    for column in TABLE_COLUMNS:
        value = metrics.get(column)
        row[column] = None if value is None else float(value)
    row["notes"] = notes
    return row


#: Where each table column comes from in an ``evaluate_method`` result of its benchmark
#: (``irkit.cir.evaluate.evaluate_method``; FashionIQ: the category average).
COLUMN_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fashioniq_R@10": ("fashioniq", ("average", "R@10")),
    "fashioniq_R@50": ("fashioniq", ("average", "R@50")),
    "cirr_R@1": ("cirr", ("R@1",)),
    "cirr_R@5": ("cirr", ("R@5",)),
    "cirr_Rs@1": ("cirr", ("Rs@1",)),
    "circo_mAP@10": ("circo", ("mAP@10",)),
}


def table_metrics(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{TABLE_COLUMNS entry: fraction in [0, 1]}`` from per-benchmark ``evaluate_method``
    results (``{"fashioniq": ..., "cirr": ..., "circo": ...}``, values in percent); columns of
    benchmarks absent from ``results`` are left out."""
    metrics: dict[str, float] = {}
    for column, (dataset, keys) in COLUMN_SOURCES.items():
        if dataset not in results:
            continue
        value: Any = results[dataset]
        if value.get("units") != "percent":
            raise ValueError(f"{dataset} result has units {value.get('units')!r}; expected 'percent'")
        for key in keys:
            value = value[key]
        metrics[column] = float(value) / 100.0
    return metrics


def cached_stage(setup: CIRBenchSetup, name: str, result_file: str, compute: Callable[[Path], Any],
                 logger: logging.Logger) -> tuple[Any, Optional[float]]:
    """Run stage ``name`` once: ``compute(out_dir / name)`` returns the result (a JSON-able
    object, written atomically to ``result_file``) or writes ``result_file`` itself (any other
    suffix; its path is returned). When ``result_file`` exists the stage is skipped and the
    saved result returned. Returns ``(result, seconds)``; seconds is None for a skipped stage."""
    directory = setup.stage_dir(name)
    path = directory / result_file
    is_json = path.suffix == ".json"
    if path.is_file():
        logger.info("stage %s: done already (%s), skipped", name, path)
        return (read_json(path) if is_json else path), None
    logger.info("stage %s: started", name)
    started = time.perf_counter()
    result = compute(directory)
    if is_json:
        atomic_write_json(path, result, indent=2)
    elif not path.is_file():
        raise RuntimeError(f"stage {name} did not write {path}")
    seconds = round(time.perf_counter() - started, 1)
    logger.info("stage %s: finished in %.1f s", name, seconds)
    return (result if is_json else path), seconds


class BenchContext:
    """The CLIP model (``setup``'s weights), its CIR context and the val splits of
    :data:`BENCHMARKS`, shared by every stage of one table run."""

    def __init__(self, setup: CIRBenchSetup) -> None:
        from irkit.benchmarks import get_benchmark
        from irkit.cir.context import CIRContext
        from irkit.cir.evaluate import load_cir_splits
        from irkit.models import create_model

        self.setup = setup
        self.loaded = create_model(setup.model, pretrained=setup.pretrained, checkpoint=setup.clip_checkpoint,
                                   seed=setup.seed, random_init=setup.random_init, precision=setup.precision)
        self.ctx = CIRContext(self.loaded, cache_dir=setup.cache_dir, batch_size=64, num_workers=setup.workers)
        self.roots = {d: get_benchmark(d).dataset_root(setup.data_root) for d in BENCHMARKS}
        self.val_splits = {d: load_cir_splits(d, self.roots[d], "val") for d in BENCHMARKS}
        self.include_shared_concept = bool(setup.budgets.get("include_shared_concept", False))

    def shared_concept(self, dataset: str) -> Optional[bool]:
        """The CIRCO template option as the protocol records it (None for other benchmarks)."""
        from irkit.benchmarks import get_benchmark

        return get_benchmark(dataset).shared_concept(self.include_shared_concept)

    def evaluate(self, method_for: Callable[[str], Any]) -> dict[str, Any]:
        """``{benchmark: evaluate_method result}`` on every val split, ``method_for(benchmark)``
        giving the method that answers that benchmark."""
        from irkit.cir.evaluate import evaluate_method

        return {d: evaluate_method(method_for(d), self.ctx, splits, self.shared_concept(d))
                for d, splits in self.val_splits.items()}
