"""Paired bootstrap of the three fusion heads of a CIR table folder against each other
(no projector, irkit-structure projector, published-structure projector) on CIRR and
FashionIQ val, from their saved ``best.pt`` heads: the README's projector comparison.

    .venv/bin/python script/projector_significance.py [log/cir-table-full] [data/cir-demo]

Writes ``<table folder>/projector_significance.json`` and prints one line per comparison
(10,000 resamples, seed 0, 95 % percentile interval; irkit.experiments.significance).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from irkit.cir.context import CIRContext
from irkit.cir.evaluate import load_cir_splits
from irkit.cir.protocol import split_values
from irkit.cir.registry import create_method
from irkit.experiments.significance import embedding_rankings, paired_bootstrap
from irkit.io import atomic_write_json
from irkit.models import create_model

STAGES = ("fusion-projector", "fusion-projector-published", "fusion")
QUESTIONS = (("cirr", ("R@1", "R@5")), ("fashioniq", ("R@10", "R@50")))


def main(table: Path, data_root: Path) -> None:
    params = json.loads((table / "params.json").read_text())
    loaded = create_model(params["model"], checkpoint=table / "clip" / "model.safetensors",
                          precision=params.get("precision", "fp32"))
    ctx = CIRContext(loaded, cache_dir=Path(".cache/irkit"), batch_size=64, num_workers=2)
    results = []
    for benchmark, metrics in QUESTIONS:
        splits = load_cir_splits(benchmark, data_root / benchmark, "val")
        rankings = {stage: [embedding_rankings(create_method("magiclens", checkpoint=table / stage / benchmark
                                                             / "checkpoints" / "best.pt"), ctx, split)
                            for split in splits] for stage in STAGES}
        for metric in metrics:
            values = {stage: split_values(splits, ranks, metric) for stage, ranks in rankings.items()}
            for a, b in ((STAGES[0], STAGES[1]), (STAGES[0], STAGES[2]), (STAGES[1], STAGES[2])):
                result = paired_bootstrap(values[a], values[b], resamples=10_000, seed=0)
                results.append({"benchmark": benchmark, "metric": metric, "method": a, "against": b, **result})
                print(f"{benchmark} {metric}: {a} {result['mean_a']:.4f} vs {b} {result['mean_b']:.4f}: "
                      f"difference {result['difference']:+.4f}, 95% CI [{result['low']:+.4f}, {result['high']:+.4f}], "
                      f"p {result['p_value']:.3f}")
    atomic_write_json(table / "projector_significance.json", results, indent=1)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("log/cir-table-full"),
         Path(sys.argv[2]) if len(sys.argv) > 2 else Path("data/cir-demo"))
