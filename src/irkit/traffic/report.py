"""What the notebooks show after each traffic stage: markdown tables (strings) and matplotlib
figures (returned, never ``plt.show``-n)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from irkit.data.records import TrafficSplit
from irkit.notebook import markdown_table
from irkit.runs import read_results
from irkit.traffic.inference import count_vehicle_queries, gallery_kind_split
from irkit.traffic.stages import HEADLINE_KEYS, Captions, GalleryAnswers, Submissions, TrafficData, Training, headline

SLOT_COUNTERS = (("color", "colors"), ("brand", "brands"), ("type", "types"))
VAL_RECALL_KEYS = ("text_to_image_R@1", "text_to_image_R@5", "text_to_image_R@10")


def _evenly(items: Sequence[Any], count: int) -> list[Any]:
    """Up to ``count`` items spread over ``items`` (first one included)."""
    return list(items[:: max(1, len(items) // max(1, count))][:count])


# --------------------------------------------------------------------------- (a) data


def vocabulary_table(data: TrafficData, top: int = 5) -> str:
    """Markdown: per slot, distinct values, labels with / without it and the ``top`` most frequent."""
    counts = data.counts
    rows = []
    for slot, name in SLOT_COUNTERS:
        counter = getattr(counts, name)
        frequent = sorted(counter.items(), key=lambda item: (-item[1], item[0].casefold()))[:top]
        rows.append({"slot": slot, "distinct values": len(counter), "labels with it": sum(counter.values()),
                     "labels missing it": counts.slot_missing[slot],
                     "most frequent": ", ".join(f"{value} ({n})" for value, n in frequent)})
    return (f"{counts.num_vehicles} vehicle / {counts.num_persons} person train labels, "
            f"{len(data.val_labels)} val labels, {len(data.test.queries)} test queries; "
            f"vocabulary in `{data.car_attribute}`\n\n"
            + markdown_table(rows, ["slot", "distinct values", "labels with it", "labels missing it",
                                    "most frequent"]))


def test_split_table(test: TrafficSplit) -> str:
    """Markdown: queries and gallery images per kind, and the queries with ground truth."""
    vehicles = count_vehicle_queries(test.queries)
    galleries = gallery_kind_split(test.gallery)
    rows = [{"kind": kind, "queries": queries, "gallery images": len(galleries[kind])}
            for kind, queries in (("vehicle", vehicles), ("person", len(test.queries) - vehicles))]
    return (f"test split at `{test.root}`: {len(test.ground_truth or {})} queries with ground truth\n\n"
            + markdown_table(rows, ["kind", "queries", "gallery images"]))


# --------------------------------------------------------------------------- (b) captions


def augmentation_table(captions: Captions) -> str:
    """Markdown: what the augmentation filled per slot and, with known attributes, how much was right."""
    augmentation = captions.augmentation
    if not augmentation["enabled"]:
        return "augmentation off: the main training reads the original sentences\n"
    accuracy = augmentation.get("fill_accuracy", {})
    rows = [{"slot": slot, "filled": augmentation["filled"][slot], **accuracy.get(slot, {})}
            for slot in augmentation["filled"]]
    return (f"{augmentation['augmented']} of {augmentation['vehicles']} vehicle labels augmented "
            f"({augmentation['candidates_scored']} candidate captions scored); fill accuracy against the "
            f"true attributes{'' if accuracy else ': not known for this data'}\n\n"
            + markdown_table(rows, ["slot", "filled", "correct", "accuracy"]))


def augmentation_figure(captions: Captions, data: TrafficData, num_images: int = 8):
    """Figure: augmented labels beside their images (label sentence, filled slots, new caption);
    ``None`` without augmentation."""
    from irkit.viz import captioned_images

    result = captions.result
    if result is None:
        return None
    filled = [i for i, chosen in enumerate(result.chosen) if chosen is not None]
    picked = _evenly(filled, num_images)
    texts = []
    for i in picked:
        parsed, chosen = result.parsed[i], result.chosen[i]
        slots = ", ".join(f"{slot}={getattr(chosen, slot)}" for slot in parsed.missing()
                          if getattr(chosen, slot) is not None)
        texts.append(f"label: {data.train_labels[i].text}\nfilled: {slots}\naug: {result.labels[i].aug}")
    return captioned_images([data.train_images / result.labels[i].image for i in picked], texts)


# --------------------------------------------------------------------------- (c) training


def training_loss_series(training_runs: Sequence[Path]) -> dict[str, list[tuple[int, float]]]:
    """``train/loss`` of each open_clip run folder (steps offset so stages follow each other)."""
    from irkit.viz import read_scalars

    series: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    for run_dir in training_runs:
        points = read_scalars(run_dir / "tensorboard", "train/loss")
        series[run_dir.name] = [(step + offset, value) for step, value in points]
        if points:
            offset += points[-1][0] + 1
    return series


def validation_series(train_run: Path, keys: Sequence[str]) -> dict[str, list[tuple[int, float]]]:
    """Per key, ``(epoch, value)`` of the run's val records (``results.jsonl``)."""
    records = read_results(train_run)
    return {key: [(record["epoch"], record[key]) for record in records if key in record] for key in keys}


def training_figure(training: Training):
    """Figure: train loss per step (every run), val loss and val text->image R@K per epoch (main run)."""
    from irkit.viz import curve_panels

    main_run = training.runs[-1]
    return curve_panels({
        "train loss": training_loss_series(training.runs),
        f"val loss ({main_run.name})": validation_series(main_run, ("clip_val_loss",)),
        f"val text->image recall ({main_run.name})": validation_series(main_run, VAL_RECALL_KEYS),
    }, xlabels={f"val loss ({main_run.name})": "epoch", f"val text->image recall ({main_run.name})": "epoch"})


# --------------------------------------------------------------------------- (d) inference, (e) merge


def inference_table(answers: GalleryAnswers) -> str:
    """Markdown: per weights and gallery, the headline prompt's query / image counts and the
    rank of the first relevant image (full score matrix)."""
    rows = []
    for weights in answers.weights:
        for result in (weights.headline.vehicle, weights.headline.person):
            stats = result.rank_statistics or {}
            rows.append({"weights": weights.name, "prompt": weights.prompt, "gallery": result.kind,
                         "queries": len(result.queries), "images": len(result.gallery),
                         "first relevant: mean rank": stats.get("mean_rank", ""),
                         "median rank": stats.get("median_rank", "")})
    return markdown_table(rows, ["weights", "prompt", "gallery", "queries", "images", "first relevant: mean rank",
                                 "median rank"])


def answers_grid(answers: GalleryAnswers, num_queries: int = 6, k: int = 5):
    """Figure: sample queries (half vehicle, half person) of the first weights' headline answers
    with their top-k images, hits marked from the test ground truth."""
    from irkit.viz import retrieval_grid

    inference = answers.weights[0].headline
    half = num_queries // 2
    picked = []
    for result, count in ((inference.vehicle, half), (inference.person, num_queries - half)):
        picked += _evenly(list(zip(result.queries, result.rankings)), count)
    test = answers.test
    ground_truth = test.ground_truth or {}
    return retrieval_grid(
        [text for text, _ in picked],
        [[test.image_dir / name for name in names[:k]] for _, names in picked],
        relevant=[{test.image_dir / name for name in ground_truth.get(text, ())} for text, _ in picked],
        k=k,
    )


def submission_table(submissions: Submissions, rows: int = 3, k: int = 3) -> str:
    """Markdown: where ``submission.json`` is, its answer count and its first ``rows`` answers."""
    results = submissions.submission["results"]
    vehicles = sum(1 for entry in results if entry["image_names"][0].startswith("vehicle_"))
    table = [{"line": i + 1, "text": entry["text"], f"top {k}": ", ".join(entry["image_names"][:k])}
             for i, entry in enumerate(results[:rows])]
    return (f"`{submissions.path}`: {len(results)} answers in test_text.txt order ({vehicles} from the vehicle "
            f"gallery, {len(results) - vehicles} from the person gallery)\n\n"
            + markdown_table(table, ["line", "text", f"top {k}"]))


# --------------------------------------------------------------------------- (f) score


def metrics_table(metrics: dict[str, Any]) -> str:
    """Markdown table of the headline metrics: trained / before training / prompt variants."""
    rows = []
    if "trained" in metrics:
        rows.append({"weights": "trained", "prompt": metrics["trained"]["prompt"], **headline(metrics["trained"])})
    if "before_training" in metrics:
        rows.append({"weights": "before training", "prompt": metrics["before_training"]["prompt"],
                     **headline(metrics["before_training"])})
    for prompt, values in metrics.get("prompt_ablation", {}).items():
        rows.append({"weights": "trained", "prompt": f"ablation: {prompt}", **values})
    return markdown_table(rows, ["weights", "prompt", *HEADLINE_KEYS])
