"""The traffic text->image challenge pipeline as stages (docs/methods.md §A), one call per stage.

reproduce:     :func:`open_run` -> (a) :func:`prepare_data` -> (b) :func:`prepare_captions`
               -> (c) :func:`train_model` -> (d) :func:`infer_galleries` -> (e) :func:`merge_submissions`
               -> (f) :func:`score_reproduction`
quick review:  :func:`open_run` -> (a) :func:`load_test_data` -> (d) -> (e) -> (f) :func:`score_quick_review`

``notebooks/reproduce.ipynb`` calls the stages one cell each; :mod:`irkit.traffic.pipeline` runs
them in the same order in one call. Every stage writes into one run folder (``log/<run>/``):
``params.txt``, ``out.log``, ``car_attribute.json``, the CSVs, the open_clip training runs as
sub-folders (``warmup/``, ``train/``, open_clip_train's layout), the per-gallery result files,
``submission.json`` and ``metrics.json``.

Zero-shot augmentation scores candidate captions with "the current model". A user's
pretrained model (e.g. ViT-bigG-14) does that directly, as published. The embedded default
starts from random weights, so stage (b) first trains it for ``warmup_epochs`` on the raw
labels (the same model then augments its own training labels — self-enhancement) and stage
(c) continues training on the augmented captions. With ``augment=False`` the same two-stage
schedule runs on the raw captions, so the ablation compares equal compute.

Inference prompt: ``prompt="auto"`` (default) chooses suffix / strip / none on the labelled
val split (:func:`irkit.traffic.inference.select_prompt`) for the trained weights and,
separately, for the weights before training; the other variants are scored on test as the
prompt ablation.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from irkit.data.records import TrafficLabel, TrafficSplit
from irkit.data.traffic import load_traffic, read_label_file, write_label_file
from irkit.errors import InputError
from irkit.io import atomic_write_json
from irkit.precision import cpu_subnormals  # imported before any torch work: FTZ/DAZ reaches torch's threads
from irkit.runs import RunFolder, read_results
from irkit.traffic.attributes import AttributeCounts, count_attributes, load_car_attribute, write_car_attribute
from irkit.traffic.augment import (
    AugmentationResult,
    augment_labels_detailed,
    default_truth_path,
    fill_accuracy,
    read_attribute_truth,
)
from irkit.traffic import DEFAULT_PROMPT, PROMPT_AUTO, PROMPT_MODES
from irkit.traffic.inference import TrafficInference, infer_traffic, select_prompt_on_val
from irkit.traffic.merge import merge_results
from irkit.traffic.training_csv import build_training_csv

PROMPT_VARIANTS = PROMPT_MODES
HEADLINE_KEYS = ("official_mAP@10", "standard_mAP@10", "R@1", "R@5", "R@10")


@dataclass
class TrafficRunParams:
    """Parameters of a reproduce / quick-review run (the notebooks' ``parameters`` cell)."""

    data_root: str = "data/demo"       # demo root (traffic under <root>/traffic) or a challenge root
    scale: str = "full"                # demo scale generated when data_root holds no data
    seed: int = 0
    model: str = "irkit-tiny"          # any open_clip model name
    pretrained: Optional[str] = None   # open_clip tag or local file: fine-tune instead of from scratch
    checkpoint: Optional[str] = None   # quick-review: weights to evaluate; reproduce: start weights
    random_init: bool = False          # quick-review: evaluate a randomly initialised model on purpose
    epochs: int = 6                    # total training epochs (warm-up included)
    warmup_epochs: int = 2             # from-scratch only: epochs before the model augments labels
    lr: Optional[float] = None         # None: recipe default (4e-7 fine-tuning, 1e-3 from scratch)
    wd: Optional[float] = None
    batch_size: Optional[int] = None
    prompt: str = DEFAULT_PROMPT       # inference prompt: suffix | strip | none | auto (best on val)
    augment: bool = True
    workers: int = 2
    cache_dir: str = ".cache/irkit"
    exif_transpose: bool = True        # apply the images' EXIF orientation (user folders)
    max_image_pixels: int = 64_000_000  # images with more pixels are refused before decoding
    precision: str = "auto"            # irkit.precision: auto | fp32 | bf16 | fp16 (training, scoring, inference)

    def starts_from_pretrained(self) -> bool:
        return bool(self.pretrained or self.checkpoint)

    def image_reader(self) -> Any:
        """The :class:`irkit.transforms.ImageReader` of ``exif_transpose`` / ``max_image_pixels``."""
        from irkit.transforms import ImageReader

        return ImageReader(exif_transpose=bool(self.exif_transpose), max_pixels=self.max_image_pixels)


@dataclass
class TrafficRun:
    """An open run folder, the parameters every stage reads and the seconds each stage took."""

    params: TrafficRunParams
    folder: RunFolder
    kind: str                                              # "reproduce" | "quick-review"
    timings: dict[str, float] = field(default_factory=dict)
    precisions: dict[str, str] = field(default_factory=dict)  # stage -> resolved precision (metrics.json)

    @property
    def path(self) -> Path:
        return self.folder.path

    def log(self, message: str, *args: Any) -> None:
        self.folder.log(message, *args)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the wall seconds of the ``with`` block to ``timings[name]``."""
        started = time.time()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.time() - started


def check_prompt(prompt: str) -> str:
    """``prompt`` if it is a variant or ``"auto"``; otherwise a clear error."""
    if prompt not in (*PROMPT_VARIANTS, PROMPT_AUTO):
        raise InputError(f"unknown prompt variant {prompt!r}; expected one of "
                         f"{', '.join((*PROMPT_VARIANTS, PROMPT_AUTO))}", field="prompt")
    return prompt


def open_run(params: TrafficRunParams, run_dir: Path | str, kind: str) -> TrafficRun:
    """Check the parameters and create the run folder (``params.txt``, ``out.log``).

    A folder that exists but holds no run yet (the one ``irkit batch run`` made for the
    executed notebook) is adopted; any other existing folder is refused.
    """
    check_prompt(params.prompt)
    if params.random_init and params.starts_from_pretrained():
        raise InputError("random_init was asked for together with weights (pretrained/checkpoint); expected "
                         "one of them", field="random_init")
    params.image_reader()  # checks the pixel limit
    from irkit.precision import resolve_precision

    resolve_precision(params.precision)  # an unknown setting is one line before the run folder exists
    run_dir = Path(run_dir)
    folder = RunFolder.create(run_dir.parent, run_dir.name, {"pipeline": kind, **asdict(params)}, adopt_fresh=True)
    return TrafficRun(params=params, folder=folder, kind=kind)


# --------------------------------------------------------------------------- (a) data


def traffic_root(data_root: Path | str) -> Path:
    """``<data_root>/traffic`` for a demo root, or ``data_root`` itself for a challenge root."""
    data_root = Path(data_root)
    for candidate in (data_root / "traffic", data_root):
        if (candidate / "train" / "train_label.txt").is_file() or (candidate / "test" / "test_text.txt").is_file():
            return candidate
    return data_root / "traffic"


def ensure_demo_data(data_root: Path | str, scale: str, seed: int) -> Path:
    """Generate the traffic demo dataset under ``data_root`` unless data is already there; an
    existing demo dataset is verified against its manifest first (a damaged one is regenerated)."""
    from irkit.data.demo import verify_demo

    verify_demo(Path(data_root), ("traffic",))
    root = traffic_root(data_root)
    if not (root / "test" / "test_text.txt").is_file():
        from irkit.data.demo import generate_demo

        generate_demo(Path(data_root), seed=seed, scale=scale, datasets=("traffic",))
        root = traffic_root(data_root)
    return root


def load_scored_test_split(root: Path) -> TrafficSplit:
    """The test split (queries + gallery) with the ground truth local scoring needs."""
    test = load_traffic(root, "test")
    if not test.ground_truth:
        raise InputError("no ground truth for local scoring (expected test/test_ground_truth.txt)", path=root)
    return test


@dataclass
class TrafficData:
    """Stage (a): the labelled splits, their attribute vocabulary and the test split."""

    root: Path                          # the traffic root (train/ val/ test/)
    train_labels: list[TrafficLabel]
    val_labels: list[TrafficLabel]
    counts: AttributeCounts             # vocabulary counts of the train labels
    car_attribute: Path                 # car_attribute.json written from ``counts``
    val_csv: Path                       # open_clip CSV of the val split (original sentences)
    test: TrafficSplit                  # queries, gallery and ground truth

    @property
    def train_label_file(self) -> Path:
        return self.root / "train" / "train_label.txt"

    @property
    def train_images(self) -> Path:
        return self.root / "train" / "train_images"


def prepare_data(run: TrafficRun) -> TrafficData:
    """(a) Demo data if absent; parse train/val labels; write ``car_attribute.json`` (the
    vocabulary, most frequent first) and ``val.csv``; load the test split with its ground truth."""
    params = run.params
    with run.timed("data"):
        root = ensure_demo_data(params.data_root, params.scale, params.seed)
        run.log("traffic data at %s", root)
        train_labels = read_label_file(root / "train" / "train_label.txt", root / "train" / "train_images")
        val_labels = read_label_file(root / "val" / "val_label.txt", root / "val" / "val_images")
        counts = count_attributes(train_labels)
        car_attribute = run.path / "car_attribute.json"
        write_car_attribute(car_attribute, counts)
        run.log("parsed %d vehicle / %d person labels; missing slots: %s", counts.num_vehicles,
                counts.num_persons, dict(counts.slot_missing))
        val_csv = build_training_csv(val_labels, root / "val" / "val_images", run.path / "val.csv", caption="text",
                                     source=root / "val" / "val_label.txt")
        test = load_scored_test_split(root)
    return TrafficData(root=root, train_labels=train_labels, val_labels=val_labels, counts=counts,
                       car_attribute=car_attribute, val_csv=val_csv, test=test)


def load_test_data(run: TrafficRun) -> TrafficSplit:
    """(a, quick review) Demo data if absent; the test split with its ground truth."""
    with run.timed("data"):
        root = ensure_demo_data(run.params.data_root, run.params.scale, run.params.seed)
        run.log("traffic data at %s", root)
        return load_scored_test_split(root)


# --------------------------------------------------------------------------- (b) captions, (c) training


def _train_clip(run: TrafficRun, name: str, train_csv: Path, val_csv: Optional[Path], epochs: int,
                start_weights: Optional[str], from_scratch_recipe: bool, lr_scheduler: str = "cosine") -> Path:
    """One open_clip training run into ``<run>/<name>/``; returns its final checkpoint."""
    from irkit.train.clip import ClipTrainConfig, recipe_defaults, train_clip

    params = run.params
    recipe = recipe_defaults(params.model, None if from_scratch_recipe else "pretrained")
    config = ClipTrainConfig(
        train_csv=train_csv, val_csv=val_csv, model=params.model, pretrained=start_weights,
        epochs=epochs, lr=params.lr or recipe["lr"], wd=params.wd or recipe["wd"],
        warmup=recipe["warmup"], lr_scheduler=lr_scheduler, batch_size=params.batch_size or recipe["batch_size"],
        workers=params.workers, seed=params.seed, log_dir=run.path, name=name, precision=params.precision,
    )
    started = time.time()
    run.log("training stage '%s': %d epochs from %s", name, epochs, start_weights or "random init")
    result = train_clip(config)
    run.log("training stage '%s' done in %.0f s (%s); last val results: %s", name, time.time() - started,
            result.precision, result.results[-1] if result.results else None)
    run.precisions[f"{name}_training"] = result.precision
    return result.final_checkpoint


@dataclass
class Captions:
    """Stage (b): the main training's captions (augmented or raw) and its start weights."""

    train_csv: Path
    start_weights: Optional[str]        # warm-up checkpoint, the user's weights, or None (random init)
    warmup_epochs: int                  # epochs the warm-up trained (0: no warm-up run)
    warmup_run: Optional[Path]          # the warm-up's open_clip run folder
    augmentation: dict[str, Any]        # metrics.json "augmentation": counts and fill accuracy
    result: Optional[AugmentationResult] = None  # per label: parsed and filled slots (augment only)


def prepare_captions(run: TrafficRun, data: TrafficData) -> Captions:
    """(b) From scratch: warm-up training on the raw labels; then, with ``augment``, the model
    fills missing colour/type slots zero-shot (``train_label_aug.txt``); writes ``train.csv``."""
    from irkit.models import create_model

    params = run.params
    start_weights = params.checkpoint or params.pretrained
    warmup_epochs, warmup_run = 0, None
    with run.timed("warmup_training"):
        if not params.starts_from_pretrained() and params.warmup_epochs > 0:
            raw_csv = build_training_csv(data.train_labels, data.train_images, run.path / "train_raw.csv",
                                         caption="text", source=data.train_label_file)
            # constant LR after the linear warm-up: the LR decays once, at the end of the final stage
            # (a cosine here would anneal to 0 and then restart at the peak LR for the main stage)
            start_weights = str(_train_clip(run, "warmup", raw_csv, None, params.warmup_epochs, None,
                                            from_scratch_recipe=True, lr_scheduler="const"))
            warmup_epochs, warmup_run = params.warmup_epochs, run.path / "warmup"

    augmentation: dict[str, Any] = {"enabled": params.augment}
    result = None
    with run.timed("augmentation"):
        if params.augment:
            # the warm-up checkpoint, the user's start weights (tag or file), or — from scratch without a
            # warm-up — the random init the recipe starts from (asked for explicitly)
            scorer = create_model(params.model, pretrained=start_weights, seed=params.seed,
                                  random_init=start_weights is None, precision=params.precision)
            run.precisions["augmentation"] = scorer.precision
            result = augment_labels_detailed(data.train_labels, scorer, data.train_images,
                                             load_car_attribute(data.car_attribute), cache_dir=params.cache_dir,
                                             num_workers=params.workers, source=data.train_label_file,
                                             reader=params.image_reader())
            augmentation.update(result.summary())
            truth_path = default_truth_path(data.train_images)
            if truth_path is not None:  # demo data ships the true attributes: how good were the fills?
                augmentation["fill_accuracy"] = fill_accuracy(result, read_attribute_truth(truth_path),
                                                              data.train_images)
            write_label_file(run.path / "train_label_aug.txt", result.labels)
            train_csv = build_training_csv(result.labels, data.train_images, run.path / "train.csv", caption="aug",
                                           source=run.path / "train_label_aug.txt")
            run.log("augmentation: %s", augmentation)
        else:
            train_csv = build_training_csv(data.train_labels, data.train_images, run.path / "train.csv",
                                           caption="text", source=data.train_label_file)
    return Captions(train_csv=train_csv, start_weights=start_weights, warmup_epochs=warmup_epochs,
                    warmup_run=warmup_run, augmentation=augmentation, result=result)


@dataclass
class Training:
    """Stage (c): the final checkpoint and the open_clip run folders (warm-up first)."""

    final_checkpoint: Path
    runs: list[Path]                    # each with out.log, tensorboard/, results.jsonl (val)
    last_val: Optional[dict[str, Any]]  # the main run's last val record (open_clip metrics)


def train_model(run: TrafficRun, data: TrafficData, captions: Captions) -> Training:
    """(c) open_clip training on ``train.csv`` (val on ``val.csv``) from the captions' start
    weights, for the epochs the warm-up left; from-scratch recipe unless starting pretrained."""
    params = run.params
    with run.timed("training"):
        final_checkpoint = _train_clip(run, "train", captions.train_csv, data.val_csv,
                                       params.epochs - captions.warmup_epochs, captions.start_weights,
                                       from_scratch_recipe=not params.starts_from_pretrained())
    runs = [path for path in (captions.warmup_run, run.path / "train") if path is not None]
    results = read_results(run.path / "train")
    return Training(final_checkpoint=final_checkpoint, runs=runs, last_val=results[-1] if results else None)


# --------------------------------------------------------------------------- (d) inference


def resolve_prompt(params: TrafficRunParams, loaded: Any, root: Path, run: Any
                   ) -> tuple[str, Optional[dict[str, Any]]]:
    """``(prompt variant, selection report or None)``: ``params.prompt`` itself, or for
    ``"auto"`` the variant with the best official mAP@10 on the labelled val split.
    ``run``: anything with ``log(message, *args)``."""
    if params.prompt != PROMPT_AUTO:
        return params.prompt, None
    selection = select_prompt_on_val(root, loaded, cache_dir=params.cache_dir, num_workers=params.workers,
                                     reader=params.image_reader())
    run.log("prompt chosen on val (%d queries): %s; official mAP@10 per variant: %s", selection.num_queries,
            selection.chosen, {v: round(m["official_mAP@10"], 4) for v, m in selection.metrics.items()})
    return selection.chosen, selection.to_json()


def prompt_order(prompt: str) -> tuple[str, ...]:
    """``prompt`` first, then the other variants in :data:`PROMPT_VARIANTS` order."""
    return (prompt, *(p for p in PROMPT_VARIANTS if p != prompt))


@dataclass
class WeightsAnswers:
    """One set of weights' answers on test: the headline prompt first, then the ablation variants."""

    name: str                                 # "trained" | "before_training"
    prompt: str                               # the headline variant
    selection: Optional[dict[str, Any]]       # prompt "auto": the val selection report
    answers: dict[str, TrafficInference]      # variant -> both galleries' top-10 (headline first)

    @property
    def headline(self) -> TrafficInference:
        return self.answers[self.prompt]


@dataclass
class GalleryAnswers:
    """Stage (d): every set of weights' answers; the first one's headline is in the run folder."""

    test: TrafficSplit
    weights: list[WeightsAnswers]


def _answer_with(run: TrafficRun, test: TrafficSplit, name: str, checkpoint: Optional[str],
                 pretrained: Optional[str], all_prompts: bool, out_dir: Optional[Path],
                 random_init: bool = False) -> WeightsAnswers:
    from irkit.models import create_model

    params = run.params
    loaded = create_model(params.model, pretrained=pretrained, checkpoint=checkpoint, seed=params.seed,
                          random_init=random_init, precision=params.precision)
    run.precisions["inference"] = loaded.precision
    prompt, selection = resolve_prompt(params, loaded, test.root, run)
    prompts = prompt_order(prompt) if all_prompts else (prompt,)
    answers = {variant: infer_traffic(test, loaded, prompt=variant, out_dir=out_dir if i == 0 else None,
                                      cache_dir=params.cache_dir, num_workers=params.workers,
                                      reader=params.image_reader())
               for i, variant in enumerate(prompts)}
    return WeightsAnswers(name=name, prompt=prompt, selection=selection, answers=answers)


def infer_galleries(run: TrafficRun, test: TrafficSplit, final_checkpoint: Optional[Path] = None) -> GalleryAnswers:
    """(d) Vehicle queries against the vehicle gallery, person queries against the person gallery.

    With ``final_checkpoint`` (reproduce): the trained weights for every prompt variant (the
    headline's ``vehicle_results.json`` / ``person_results.json`` / ``inference.json`` written
    to the run folder), then the start weights for their headline prompt only — from scratch
    that is the random init the recipe starts from, asked for explicitly. Without (quick
    review): the parameters' weights for every variant, headline files written; random
    weights only with ``params.random_init``.
    """
    params = run.params
    with run.timed("inference"):
        if final_checkpoint is None:
            trained = _answer_with(run, test, "trained", params.checkpoint, params.pretrained, True, run.path,
                                   random_init=params.random_init)
            return GalleryAnswers(test=test, weights=[trained])
        trained = _answer_with(run, test, "trained", str(final_checkpoint), None, True, run.path)
        before = _answer_with(run, test, "before_training", params.checkpoint, params.pretrained, False, None,
                              random_init=not params.starts_from_pretrained())
    return GalleryAnswers(test=test, weights=[trained, before])


# --------------------------------------------------------------------------- (e) merge


@dataclass
class Submissions:
    """Stage (e): ``{"results": [...]}`` per weights and prompt, in test_text.txt order."""

    path: Path                                         # submission.json: the first weights' headline
    submission: dict[str, Any]                         # what ``path`` holds
    by_weights: dict[str, dict[str, dict[str, Any]]]   # weights name -> variant -> submission


def merge_submissions(run: TrafficRun, answers: GalleryAnswers) -> Submissions:
    """(e) ``submission.json`` = the written vehicle + person result files merged in
    test_text.txt order (validated); the other answers are merged in memory."""
    with run.timed("inference"):
        first = answers.weights[0]
        path = run.path / "submission.json"
        written = merge_results(first.headline.outputs["vehicle"], first.headline.outputs["person"],
                                answers.test.root / "test" / "test_text.txt", path)
        by_weights = {weights.name: {variant: written if weights is first and variant == first.prompt
                                     else inference.submission()
                                     for variant, inference in weights.answers.items()}
                      for weights in answers.weights}
    return Submissions(path=path, submission=written, by_weights=by_weights)


# --------------------------------------------------------------------------- (f) score


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The :data:`HEADLINE_KEYS` of a metrics block."""
    return {k: metrics[k] for k in HEADLINE_KEYS}


@dataclass
class CheckpointEvaluation:
    """Test metrics of one set of weights per prompt variant; ``prompt`` is the headline one."""

    prompt: str
    results: dict[str, dict[str, Any]]
    selection: Optional[dict[str, Any]] = None

    @property
    def headline(self) -> dict[str, Any]:
        return self.results[self.prompt]


def evaluate_answers(run: TrafficRun, answers: GalleryAnswers, submissions: Submissions
                     ) -> dict[str, CheckpointEvaluation]:
    """Official / standard mAP@10 and R@K of every submission against the test ground truth,
    plus each variant's first-relevant rank statistics; keyed by weights name."""
    from irkit.benchmarks.traffic import evaluate_traffic_submission

    test = answers.test
    evaluations = {}
    for weights in answers.weights:
        results = {}
        for variant, inference in weights.answers.items():
            metrics = evaluate_traffic_submission(submissions.by_weights[weights.name][variant], test.ground_truth,
                                                  queries=test.queries)
            metrics["rank_statistics"] = inference.summary()["rank_statistics"]
            metrics["prompt"] = variant
            run.log("weights %s, prompt %s: official mAP@10 %.4f, standard mAP@10 %.4f, R@1 %.4f",
                    inference.weights_id[:24], variant, metrics["official_mAP@10"], metrics["standard_mAP@10"],
                    metrics["R@1"])
            results[variant] = metrics
        evaluations[weights.name] = CheckpointEvaluation(prompt=weights.prompt, results=results,
                                                         selection=weights.selection)
    return evaluations


def _finish(run: TrafficRun, metrics: dict[str, Any]) -> dict[str, Any]:
    # the setting and what it resolved to in each stage (auto's choice depends on the machine)
    metrics = {**metrics, "precision": {"setting": run.params.precision, **run.precisions,
                                        "cpu_subnormals": cpu_subnormals()}}
    atomic_write_json(run.path / "metrics.json", metrics, indent=2)
    run.log("metrics: %s", json.dumps({"prompt_ablation": metrics["prompt_ablation"]}))
    run.folder.close()
    return metrics


def score_reproduction(run: TrafficRun, captions: Captions, training: Training, answers: GalleryAnswers,
                       submissions: Submissions) -> dict[str, Any]:
    """(f) Score trained vs before-training answers; write ``metrics.json`` and close the run.

    Returns the metrics: ``trained`` / ``before_training`` (headline prompt), ``prompt_selection``,
    ``prompt_ablation`` (trained, every variant), ``augmentation``, ``training``, ``timings_s``.
    """
    params = run.params
    with run.timed("inference"):
        evaluations = evaluate_answers(run, answers, submissions)
    trained, before = evaluations["trained"], evaluations["before_training"]
    return _finish(run, {
        "protocol": trained.headline["protocol"],
        "trained": trained.headline,
        "before_training": before.headline,
        "prompt_selection": {"trained": trained.selection, "before_training": before.selection},
        "prompt_ablation": {p: headline(m) for p, m in trained.results.items()},
        "augmentation": captions.augmentation,
        "training": {"epochs": params.epochs,
                     "warmup_epochs": params.warmup_epochs if not params.starts_from_pretrained() else 0,
                     "final_checkpoint": str(training.final_checkpoint), "val": training.last_val},
        "timings_s": {k: round(v, 1) for k, v in run.timings.items()},
    })


def score_quick_review(run: TrafficRun, answers: GalleryAnswers, submissions: Submissions) -> dict[str, Any]:
    """(f, quick review) Score the weights' answers; write ``metrics.json`` and close the run."""
    params = run.params
    evaluation = evaluate_answers(run, answers, submissions)["trained"]
    return _finish(run, {
        "protocol": evaluation.headline["protocol"],
        "trained": evaluation.headline,
        "prompt_selection": evaluation.selection,
        "prompt_ablation": {p: headline(m) for p, m in evaluation.results.items()},
        "weights": params.checkpoint or params.pretrained or "random-init",
    })

