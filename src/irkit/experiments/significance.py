"""Are the CIR table's differences real?  Paired bootstrap over the validation queries.

Every row of the table is scored on the *same* queries, so a difference between two rows is
judged per query: :func:`paired_bootstrap` resamples the queries with replacement and gives
the confidence interval of the mean per-query difference (and a two-sided bootstrap p-value).

:func:`significance_stage` answers the acceptance questions of the table run in
``setup.out_dir``:

* zero-shot: does LinCIR / SEARLE phi (and SEARLE-OTI, when run) beat the best baseline on
  CIRR R@1 and CIRCO mAP@10?
* re-ranking: does stage I + II beat stage I alone on CIRR R@1 (and FashionIQ R@10)?

Per-query values come from the rankings themselves (:func:`irkit.cir.protocol.per_query_values`,
the benchmark's own per-query rule), recomputed
with the library's methods for the zero-shot rows and read from the saved top-K files for
stage I and the re-ranked rows. Values are fractions (a query's R@k is 0 or 1).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from irkit.cir.protocol import rank_split, split_values
from irkit.data.records import CIRSplit
from irkit.errors import InputError

log = logging.getLogger(__name__)

RESULT_FILE = "significance.json"
REPORT_FILE = "significance.md"
#: (benchmark, metric) pairs the zero-shot acceptance is judged on.
ZERO_SHOT_QUESTIONS = (("cirr", "R@1"), ("circo", "mAP@10"))
#: (benchmark, metric) pairs re-ranking is judged on against its own stage I.
RERANK_QUESTIONS = (("cirr", "R@1"), ("fashioniq", "R@10"))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Paired bootstrap of ``mean(a - b)`` over queries (``a[i]``, ``b[i]``: one query's values).

    Returns ``mean_a``, ``mean_b``, ``difference`` (observed mean of a - b), ``low`` / ``high``
    (percentile interval at ``level``), ``p_value`` (two-sided: twice the smaller share of
    resampled differences on either side of 0, at most 1) and ``queries``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise InputError(f"paired values must be two equal-length non-empty vectors; got {a.shape} and {b.shape}")
    if resamples <= 0 or not 0 < level < 1:
        raise InputError(f"resamples {resamples} / level {level}; expected > 0 and in (0, 1)")
    rng = np.random.default_rng(seed)
    differences = a - b
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # bounded memory: 1000 x Q indices at a time
        count = min(1000, resamples - start)
        means[start:start + count] = differences[rng.integers(0, a.size, size=(count, a.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    p_value = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "difference": float(differences.mean()),
            "low": float(low), "high": float(high), "p_value": p_value, "queries": int(a.size)}


def embedding_rankings(method: Any, ctx: Any, split: CIRSplit, depth: int = 50) -> dict[str, list[str]]:
    """Top-``depth`` rankings of an embedding method under the split's protocol."""
    return rank_split(split, ctx.query_embeddings(method, split), method.gallery_embeddings(ctx, split), depth)


def topk_rankings(path: Path, splits: Sequence[CIRSplit]) -> list[dict[str, list[str]]]:
    """The rankings of ``splits`` in a saved top-K file (stage I or re-ranked)."""
    from irkit.cir.topk import load_topk_parts

    return [part.rankings() for part in load_topk_parts(path, splits)]


def _verdict(result: Mapping[str, float]) -> str:
    if result["low"] > 0:
        return "better (95% CI above 0)"
    if result["high"] < 0:
        return "worse (95% CI below 0)"
    return "no significant difference (95% CI spans 0)"


def _compare(label: str, baseline_label: str, benchmark: str, metric: str, values: np.ndarray,
             baseline: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    result = paired_bootstrap(values, baseline, resamples=resamples, seed=seed)
    return {"method": label, "against": baseline_label, "benchmark": benchmark, "metric": metric, **result,
            "verdict": _verdict(result)}


def significance_stage(bench: Any, stages: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                       resamples: int = 10_000) -> dict[str, Any]:
    """The paired comparisons of one table run (module docstring).

    ``bench``: the zero-shot stages' :class:`~irkit.experiments.setup.BenchContext` (with
    ``method(name, checkpoint)``); ``stages``: their results (``lincir`` / ``searle`` phi
    checkpoints); ``rows``: the table rows (the best baseline per question is read off them).
    """
    setup, out_dir = bench.setup, Path(bench.setup.out_dir)
    seed = int(setup.seed)
    values: dict[tuple[str, str, str], np.ndarray] = {}

    def method_values(label: str, method: Any, benchmark: str, metric: str) -> np.ndarray:
        key = (label, benchmark, metric)
        if key not in values:
            splits = bench.val_splits[benchmark]
            values[key] = split_values(splits, [embedding_rankings(method, bench.ctx, s) for s in splits], metric)
        return values[key]

    comparisons = []
    baselines = [r for r in rows if r["group"] == "baseline"]
    # label -> (stage, checkpoint of the method answering ``benchmark``)
    zero_shot = {"LinCIR (phi)": ("lincir", lambda b: out_dir / "lincir" / stages["lincir"]["phi"]["best_checkpoint"]),
                 "SEARLE (phi)": ("searle", lambda b: out_dir / "searle" / stages["searle"]["phi"]["best_checkpoint"]),
                 "SEARLE-OTI": ("searle-oti", lambda b: out_dir / "searle-oti" / f"oti-{b}")}
    for benchmark, metric in ZERO_SHOT_QUESTIONS:
        column = f"{benchmark}_{metric}"
        best = max(baselines, key=lambda r: r[column])  # first wins a tie, as in the table order
        best_values = method_values(best["method"], bench.method(best["method"]), benchmark, metric)
        for label, (name, checkpoint) in zero_shot.items():
            if name not in stages:
                continue
            mine = method_values(label, bench.method(name, checkpoint(benchmark)), benchmark, metric)
            comparisons.append(_compare(label, best["method"], benchmark, metric, mine, best_values, resamples, seed))

    comparisons += rerank_comparisons(out_dir, bench.val_splits, resamples, seed)
    return {"resamples": resamples, "seed": seed, "level": 0.95, "comparisons": comparisons}


def rerank_comparisons(out_dir: Path, val_splits: Mapping[str, Sequence[CIRSplit]], resamples: int = 10_000,
                       seed: int = 0) -> list[dict[str, Any]]:
    """Every ``rerank*-k<K>`` stage of a table folder against its stage I, from the saved
    top-K files (:data:`RERANK_QUESTIONS`; a metric deeper than K is left out). Empty when
    the folder has no fusion rows."""
    from irkit.experiments.fusion_rows import RERANKED_FILE, TOPK_FILE

    stage1_file = Path(out_dir) / "stage1" / TOPK_FILE
    if not stage1_file.is_file():
        return []
    comparisons = []
    for benchmark, metric in RERANK_QUESTIONS:
        splits = val_splits[benchmark]
        before = split_values(splits, topk_rankings(stage1_file, splits), metric)
        for reranked_file in sorted(Path(out_dir).glob(f"rerank*-k*/{RERANKED_FILE}")):
            stage = reranked_file.parent.name
            if int(stage.rsplit("-k", 1)[1]) < int(metric.split("@")[1]):
                continue  # the metric would look past the re-sorted top-K
            after = split_values(splits, topk_rankings(reranked_file, splits), metric)
            comparisons.append(_compare(f"stage I + II ({stage})", "stage I alone", benchmark, metric, after,
                                        before, resamples, seed))
    return comparisons


def significance_markdown(result: Mapping[str, Any]) -> str:
    """A markdown table of :func:`significance_stage`'s comparisons (differences as fractions)."""
    lines = [f"# Paired bootstrap over val queries ({result['resamples']} resamples, seed {result['seed']}, "
             f"95% percentile intervals)", "",
             "| method | against | benchmark | metric | method value | against value | difference | 95% CI | p | "
             "verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["comparisons"]:
        lines.append(f"| {c['method']} | {c['against']} | {c['benchmark']} ({c['queries']} queries) | {c['metric']} | "
                     f"{c['mean_a']:.4f} | {c['mean_b']:.4f} | {c['difference']:+.4f} | "
                     f"[{c['low']:+.4f}, {c['high']:+.4f}] | {c['p_value']:.3f} | {c['verdict']} |")
    return "\n".join(lines) + "\n"


__all__: Sequence[str] = ("paired_bootstrap", "embedding_rankings",
                          "topk_rankings", "significance_stage", "rerank_comparisons", "significance_markdown")
