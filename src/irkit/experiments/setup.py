"""What every row of the CIR comparison table shares: data, CLIP model, folders, budgets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

#: Table columns (metric keys), in order: FashionIQ average over dress/shirt/toptee, CIRR val
#: (reference removed; Rs@1 on the img_set subset), CIRCO val mAP@10.  Units: fraction in [0, 1].
TABLE_COLUMNS = ("fashioniq_R@10", "fashioniq_R@50", "cirr_R@1", "cirr_R@5", "cirr_Rs@1", "circo_mAP@10")


@dataclass
class CIRBenchSetup:
    """Inputs shared by every method of the CIR table.

    ``data_root`` holds ``fashioniq/``, ``cirr/``, ``circo/`` (published layouts) and, for demo
    data, ``captions/``. ``clip_checkpoint`` / ``pretrained`` select the CLIP weights exactly as
    ``irkit.models.create_model`` does. Each stage writes only under ``out_dir / <stage>``.
    ``budgets`` holds per-stage step/epoch counts (scale-dependent; see ``cir_table``).
    """

    data_root: Path
    out_dir: Path
    model: str = "irkit-tiny"
    clip_checkpoint: Optional[Path] = None
    pretrained: Optional[str] = None
    cache_dir: Path = Path(".cache/irkit")
    scale: str = "full"
    seed: int = 0
    workers: int = 2
    budgets: dict[str, Any] = field(default_factory=dict)

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
#: (``irkit.methods.textual_inversion.evaluate_method``; FashionIQ: the category average).
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
