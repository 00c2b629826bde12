"""The CIR comparison table: one reproducible, resumable run from data to ``table.md``.

:func:`run_cir_table` runs these stages, each writing only under ``out/<stage>/`` and skipped
when its result file already exists (a killed run is resumed by running it again):

==============  ==========================================================================
stage           what it does (result file)
==============  ==========================================================================
``data``        demo FashionIQ / CIRR / CIRCO under ``data_root`` if absent (``summary.json``)
``clip``        demo CIR CLIP model: continue training ``model`` (from ``--checkpoint`` /
                ``--pretrained``, else random init) with :mod:`irkit.train.clip` on the
                FashionIQ-train + CIRR-train demo captions — never CIRCO's gallery captions,
                so CIRCO stays an honest evaluation (``model.safetensors``); skipped with
                ``train_clip=False`` (a real pretrained model is used as given)
``baselines``   image-only, text-only, image-text-sum (``metrics.json``)
``lincir``      LinCIR phi trained from the captions alone, then evaluated (``metrics.json``)
``searle``      OTI tokens of a capped set of training references, phi distilled from them
                (+ phrase regulariser), evaluated (``metrics.json``)
``searle-oti``  per-query OTI on the validation references (only when the budget's
                ``searle_oti_steps`` > 0; ``metrics.json``)
fusion rows     :func:`irkit.experiments.fusion_rows.fusion_rows` (its own stage folders;
                rows cached in ``fusion_rows.json``), unless ``fusion=False``
==============  ==========================================================================

Every method is scored on FashionIQ val (mean of dress/shirt/toptee), CIRR val (reference
removed; Rs@1 on the img_set subset) and CIRCO val (mAP@10; ``shared_concept`` in the query
text when the budget's ``include_shared_concept``). phi checkpoints are selected on the
**CIRR train triplets** (budget ``phi_select_split``), so no validation query chooses them.
Outputs: ``table.csv`` / ``table.md`` (:data:`~irkit.experiments.setup.TABLE_COLUMNS` as
fractions in [0, 1], one note per row), ``out.log``, ``stage_times.json``. ``params.json``
records everything that changes results; an ``out`` made with other params is refused.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from irkit.errors import InputError
from irkit.experiments.setup import (
    BENCHMARKS,
    TABLE_COLUMNS,
    BenchContext,
    CIRBenchSetup,
    cached_stage,
    table_metrics,
    table_row,
)
from irkit.io import atomic_write_json, atomic_write_text, file_sha256, read_json

log = logging.getLogger(__name__)

#: Demo caption CSVs (under ``<data_root>/captions/``) the demo CLIP model and LinCIR's phi
#: train on. CIRCO's ``circo_gallery.csv`` describes the evaluation gallery: never used.
TRAIN_CAPTION_FILES = ("fashioniq_train.csv", "cirr_train.csv")
#: Training splits whose reference images SEARLE's OTI inverts (unlabelled images).
OTI_SOURCE_SPLITS = (("cirr", "train"), ("fashioniq", "train"))
#: The benchmark whose val split selects the best phi checkpoint (the published trainers use CIRR).
PHI_VALIDATION_BENCHMARK = "cirr"
PARAMS_FILE = "params.json"
#: Parameters (``budgets.<key>`` for a budget) whose "off" value (False / 0) leaves rows out:
#: switching one on in an existing folder only adds rows, so the folder is resumed.
ADDITIVE_PARAMS = frozenset({"fusion", "budgets.searle_oti_steps", "budgets.published_projector"})
BASELINES = ("image-only", "text-only", "image-text-sum")

#: Per-scale budgets of the zero-shot stages (override any key with ``budget_overrides``).
#: ``full`` is sized for ~40 min on 2 shared CPU cores (CLIP ~10 min; OTI, the costliest part
#: of SEARLE, capped at ``oti_images`` x ``oti_steps``; phi learning rates raised from the
#: published 1e-4 to 5e-4 for the 300-step budget); ``tiny`` runs in seconds (tests).
SCALE_BUDGETS: dict[str, dict[str, Any]] = {
    "tiny": dict(clip_epochs=1, clip_batch_size=16, clip_lr=5e-4, clip_wd=0.1, clip_warmup=2,
                 lincir_steps=4, lincir_batch_size=16, lincir_lr=1e-4, lincir_validate_every=2,
                 oti_images=8, oti_steps=3, oti_batch_size=8,
                 searle_steps=4, searle_batch_size=8, searle_lr=1e-4, searle_validate_every=2,
                 searle_oti_steps=2, phi_select_split="train", include_shared_concept=False),
    "small": dict(clip_epochs=3, clip_batch_size=64, clip_lr=5e-4, clip_wd=0.1, clip_warmup=10,
                  lincir_steps=100, lincir_batch_size=64, lincir_lr=1e-4, lincir_validate_every=25,
                  oti_images=64, oti_steps=60, oti_batch_size=64,
                  searle_steps=100, searle_batch_size=64, searle_lr=1e-4, searle_validate_every=25,
                  searle_oti_steps=0, phi_select_split="train", include_shared_concept=False),
    # full: 10 epochs at 1e-3 for the demo CIR backbone (about 11 min on 2 quiet cores); 3 epochs
    # at 5e-4 left it too weak to separate the methods (see the README's CIR table)
    "full": dict(clip_epochs=10, clip_batch_size=128, clip_lr=1e-3, clip_wd=0.1, clip_warmup=20,
                 lincir_steps=300, lincir_batch_size=64, lincir_lr=5e-4, lincir_validate_every=50,
                 oti_images=256, oti_steps=150, oti_batch_size=128,
                 searle_steps=300, searle_batch_size=64, searle_lr=5e-4, searle_validate_every=50,
                 searle_oti_steps=0, phi_select_split="train", include_shared_concept=False),
}


def resolve_budgets(scale: str, overrides: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The scale's budgets with ``overrides``; a key that neither these stages nor the fusion
    rows know is an :class:`InputError`."""
    if scale not in SCALE_BUDGETS:
        raise InputError(f"unknown scale {scale!r}; expected one of {', '.join(SCALE_BUDGETS)}", field="scale")
    budgets = dict(SCALE_BUDGETS[scale])
    known = set(budgets) | _fusion_budget_keys()
    unknown = sorted(set(overrides or {}) - known)
    if unknown:
        raise InputError(f"unknown budget key(s) {unknown}; expected some of {sorted(known)}", field="budget")
    budgets.update(overrides or {})
    return budgets


def _fusion_budget_keys() -> set[str]:
    try:
        from dataclasses import fields

        from irkit.experiments.fusion_rows import FusionBudget
    except ImportError:
        return set()
    return {f.name for f in fields(FusionBudget)}


# --------------------------------------------------------------------------- run bookkeeping


@dataclass
class CIRTableResult:
    """What :func:`run_cir_table` produced."""

    out_dir: Path
    rows: list[dict[str, Any]]
    clip_checkpoint: Optional[Path]
    stage_seconds: dict[str, float]
    significance: dict[str, Any] = field(default_factory=dict)


def table_params(setup: CIRBenchSetup, train_clip: bool, fusion: bool) -> dict[str, Any]:
    """Everything that changes the table's numbers (compared with an existing ``params.json``)."""
    from irkit.precision import resolve_precision

    checkpoint = setup.clip_checkpoint
    return {
        "data_root": str(Path(setup.data_root).resolve()), "scale": setup.scale, "seed": setup.seed,
        "model": setup.model, "pretrained": setup.pretrained,
        "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
        "train_clip": bool(train_clip), "fusion": bool(fusion), "budgets": dict(setup.budgets),
        "precision": resolve_precision(setup.precision, "cpu").name,  # resolved: auto's choice depends on the CPU
    }


def _flat_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with the ``budgets`` dict spread into ``budgets.<key>`` entries."""
    flat = {k: v for k, v in params.items() if k != "budgets"}
    flat.update({f"budgets.{k}": v for k, v in (params.get("budgets") or {}).items()})
    return flat


def claim_out_dir(out_dir: Path, params: Mapping[str, Any]) -> bool:
    """Create ``out_dir`` with ``params.json``, or accept an existing one made with the same
    params (returns True when resuming). A folder with other params, or a non-empty folder
    without ``params.json``, is refused (run folders are never overwritten). The one exception
    is what only adds rows: a parameter of :data:`ADDITIVE_PARAMS` switched on from its "off"
    value (``fusion``; ``searle_oti_steps`` from 0, the SEARLE-OTI row). Such a folder is
    resumed, ``params.json`` records the new value, finished stages are not touched."""
    out_dir = Path(out_dir)
    path = out_dir / PARAMS_FILE
    wanted = json.loads(json.dumps(dict(params)))  # as read back (tuples become lists)
    if path.is_file():
        saved = read_json(path)
        old, new = _flat_params(saved), _flat_params(wanted)
        diffs = [f"{k}: saved {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(set(old) | set(new))
                 if old.get(k) != new.get(k) and not (k in ADDITIVE_PARAMS and not old.get(k))]
        if diffs:
            raise InputError("out folder was made with other parameters (" + "; ".join(diffs)
                             + "); choose another --out", path=out_dir)
        if saved != wanted:  # only additive rows switched on: record them
            atomic_write_json(path, wanted, indent=2)
        return True
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"out folder exists and is not a CIR table run (no {PARAMS_FILE}); choose another --out",
                         path=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, wanted, indent=2)
    return False


@contextlib.contextmanager
def _out_log(out_dir: Path) -> Iterator[logging.Logger]:
    """The ``irkit.experiments`` loggers (this driver, the fusion rows, the significance report),
    also writing to ``out_dir/out.log`` (appended on resume)."""
    formatter = logging.Formatter("%(asctime)s | %(levelname)s | %(message)s", "%Y-%m-%d,%H:%M:%S")
    handlers = [logging.FileHandler(out_dir / "out.log", encoding="utf-8"), logging.StreamHandler(sys.stderr)]
    parent = logging.getLogger("irkit.experiments")
    previous = (parent.level, parent.propagate)
    for handler in handlers:  # out.log and the console (stage lines with their seconds, as they happen)
        handler.setFormatter(formatter)
        parent.addHandler(handler)
    parent.setLevel(logging.INFO)
    parent.propagate = False  # a root handler another library installed must not print every line twice
    try:
        yield log
    finally:
        for handler in handlers:
            parent.removeHandler(handler)
            handler.close()
        parent.setLevel(previous[0])
        parent.propagate = previous[1]


class _Stages:
    """Runs named stages once: a stage whose result file exists is loaded instead of recomputed."""

    def __init__(self, setup: CIRBenchSetup) -> None:
        self.setup = setup
        self.seconds: dict[str, float] = {}

    def run(self, name: str, result_file: str, compute: Callable[[Path], Any]) -> Any:
        result, seconds = cached_stage(self.setup, name, result_file, compute, log)
        if seconds is not None:
            self.seconds[name] = seconds
        return result


# --------------------------------------------------------------------------- stages


def ensure_cir_data(data_root: Path, scale: str, seed: int) -> dict[str, Any]:
    """Generate the demo FashionIQ/CIRR/CIRCO under ``data_root`` unless they are all there.

    A folder holding some benchmarks but no demo manifest (real data) is never written into.
    """
    from irkit.data.demo import MANIFEST_NAME, generate_demo

    data_root = Path(data_root)
    missing = [d for d in BENCHMARKS if not (data_root / d).is_dir()]
    if not missing:
        return {"data_root": str(data_root), "generated": [], "existing": list(BENCHMARKS)}
    if data_root.is_dir() and any(data_root.iterdir()) and not (data_root / MANIFEST_NAME).is_file():
        raise InputError(f"data root lacks {missing} and is not an irkit demo folder (no {MANIFEST_NAME}); "
                         "expected fashioniq/, cirr/ and circo/ in the published layouts", path=data_root)
    summary = generate_demo(data_root, seed=seed, scale=scale, datasets=list(BENCHMARKS))
    return {"data_root": str(data_root), **summary}


def resolved_caption_csv(data_root: Path, names: Sequence[str], out_csv: Path) -> int:
    """Concatenate demo caption CSVs into ``out_csv`` with absolute image paths (the demo's
    paths are relative to the CSV's folder, which open_clip's CsvDataset does not handle)."""
    from irkit.data.captions import load_caption_csv, write_caption_csv
    from irkit.io import safe_join

    records = []
    for name in names:
        path = Path(data_root) / "captions" / name
        for record in load_caption_csv(path, check_images=False):
            # ``../cirr/...`` is relative to captions/; joined onto the data root it must stay inside it.
            image = safe_join(data_root, str(Path("captions") / record.filepath), source=path, line=record.line,
                              field="filepath")
            records.append((image, record.title))
    missing = [p for p, _ in records if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} caption image(s) not found, e.g. {missing[0]}; expected the demo images",
                         path=Path(data_root) / "captions")
    return write_caption_csv(out_csv, records)


def train_demo_clip(setup: CIRBenchSetup, stage_dir: Path) -> Path:
    """Continue training ``setup.model`` on the demo CIR captions; writes ``model.safetensors``.

    A run killed after an epoch checkpoint resumes from it; one killed before any checkpoint
    (nothing to keep) is restarted.
    """
    from irkit.models import create_model, save_weights
    from irkit.train.clip import ClipTrainConfig, train_clip

    budgets = setup.budgets
    train_csv = stage_dir / "train.csv"
    rows = resolved_caption_csv(Path(setup.data_root), TRAIN_CAPTION_FILES, train_csv)
    log.info("clip: %d training captions (%s)", rows, ", ".join(TRAIN_CAPTION_FILES))
    run_dir = stage_dir / "run"
    has_checkpoint = any((run_dir / "checkpoints").glob("epoch_*.pt"))
    if run_dir.exists() and not has_checkpoint:
        shutil.rmtree(run_dir)
    start = setup.clip_checkpoint or setup.pretrained
    config = ClipTrainConfig(
        train_csv=train_csv, model=setup.model, pretrained=str(start) if start else None,
        epochs=int(budgets["clip_epochs"]), lr=float(budgets["clip_lr"]), wd=float(budgets["clip_wd"]),
        warmup=int(budgets["clip_warmup"]), batch_size=int(budgets["clip_batch_size"]),
        workers=max(1, min(setup.workers, 2)), seed=setup.seed, log_dir=stage_dir, name="run",
        resume="latest" if has_checkpoint else None, precision=setup.precision)
    result = train_clip(config)
    loaded = create_model(setup.model, checkpoint=result.final_checkpoint, seed=setup.seed, precision=setup.precision)
    return save_weights(loaded, stage_dir / "model.safetensors")


class _Bench(BenchContext):
    """The CLIP model, context and validation splits every zero-shot stage shares."""

    def __init__(self, setup: CIRBenchSetup) -> None:
        from irkit.benchmarks import get_benchmark

        super().__init__(setup)
        self.phi_validator_metric = get_benchmark(PHI_VALIDATION_BENCHMARK).selection_metric

    def evaluate_everywhere(self, method: Any) -> dict[str, Any]:
        """One method on every val split (``{benchmark: evaluate_method result}``)."""
        return self.evaluate(lambda _: method)

    def method(self, name: str, checkpoint: Optional[Path | str] = None) -> Any:
        from irkit.cir.registry import create_method, method_options

        return create_method(name, **method_options(name, checkpoint, self.include_shared_concept))

    def phi_validator(self, method: str) -> Any:
        from irkit.cir.training import phi_validator

        return phi_validator(self.ctx, method, PHI_VALIDATION_BENCHMARK, self.roots[PHI_VALIDATION_BENCHMARK],
                                  str(self.setup.budgets["phi_select_split"]), self.include_shared_concept)


def _scored(results: Mapping[str, Any]) -> dict[str, Any]:
    return {"results": dict(results), "table": table_metrics(dict(results))}


def baselines_stage(bench: _Bench, stage_dir: Path) -> dict[str, Any]:
    """image-only, text-only, image-text-sum on every val split."""
    from tqdm import tqdm

    out = {}
    for name in tqdm(BASELINES, desc="baselines", unit="method"):
        out[name] = _scored(bench.evaluate_everywhere(bench.method(name)))
        atomic_write_json(stage_dir / f"{name}.json", out[name], indent=2)
    return out


def _train_phi(bench: _Bench, stage_dir: Path, method: str, steps: int, batch_size: int, lr: float,
               validate_every: int, train: Callable[[Any, Any, Any], Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Train phi in ``stage_dir/phi`` (resumed when present), validated on CIRR
    ``phi_select_split``; returns the best checkpoint and where it was chosen."""
    from irkit.cir.training import TrainingConfig, open_run

    config = TrainingConfig(steps=int(steps), batch_size=int(batch_size), learning_rate=float(lr),
                            validate_every=int(validate_every), seed=bench.setup.seed,
                            include_shared_concept=bench.include_shared_concept, precision=bench.setup.precision)
    resume = "latest" if (stage_dir / "phi" / "params.txt").is_file() else None
    run = open_run(stage_dir, "phi", {"method": method, **config.to_params(), **extra}, resume)
    try:
        result = train(config, run, bench.phi_validator(method))
    finally:
        run.close()
    if result.best_checkpoint is None:
        raise RuntimeError(f"{method} phi training kept no best checkpoint in {run.path}")
    return {"best_checkpoint": str(Path(result.best_checkpoint).resolve().relative_to(stage_dir.resolve())),
            "best_value": result.best_value, "best_step": result.best_step, "steps": config.steps,
            "batch_size": config.batch_size, "learning_rate": config.learning_rate,
            "selected_on": f"cirr {bench.setup.budgets['phi_select_split']} {bench.phi_validator_metric}"}


def lincir_stage(bench: _Bench, stage_dir: Path) -> dict[str, Any]:
    """LinCIR: phi from the demo training captions (text only), then evaluated."""
    from irkit.methods.lincir import read_captions
    from irkit.workflows.cir import train_phi

    budgets = bench.setup.budgets
    captions: list[str] = []
    for name in TRAIN_CAPTION_FILES:
        captions += read_captions(Path(bench.setup.data_root) / "captions" / name)
    phi = _train_phi(bench, stage_dir, "lincir", budgets["lincir_steps"], budgets["lincir_batch_size"],
                     budgets["lincir_lr"], budgets["lincir_validate_every"],
                     lambda config, run, validator: train_phi("lincir", bench.loaded, run, config, captions=captions,
                                                              validator=validator, resume="latest"),
                     {"captions": list(TRAIN_CAPTION_FILES), "num_captions": len(captions)})
    phi["num_captions"] = len(captions)
    method = bench.method("lincir", stage_dir / phi["best_checkpoint"])
    return {"phi": phi, **_scored(bench.evaluate_everywhere(method))}


def oti_training_images(bench: _Bench, cap: int) -> tuple[list[str], list[Path]]:
    """Up to ``cap`` reference images of the training splits (:data:`OTI_SOURCE_SPLITS`), the
    cap shared equally by the benchmarks and, within FashionIQ, by its categories (first
    references in annotation order). Ids are prefixed ``<benchmark>/``."""
    from irkit.cir.evaluate import load_cir_splits
    from irkit.methods.textual_inversion import unique_references

    ids: list[str] = []
    paths: list[Path] = []
    per_benchmark = max(1, cap // len(OTI_SOURCE_SPLITS))
    for dataset, split_name in OTI_SOURCE_SPLITS:
        splits = load_cir_splits(dataset, bench.roots[dataset], split_name)
        per_split = max(1, per_benchmark // len(splits))
        for split in splits:
            for image_id in unique_references(split)[:per_split]:
                ids.append(f"{dataset}/{image_id}")
                paths.append(split.image_path(image_id))
    return ids, paths


def searle_stage(bench: _Bench, stage_dir: Path) -> dict[str, Any]:
    """SEARLE: OTI on capped training references, phi distilled from the tokens, evaluated."""
    from irkit.cir.context import raw_image_embeddings
    from irkit.methods.searle import PHI_TOP_K_CONCEPTS, OTIConfig, run_oti
    from irkit.methods.textual_inversion import load_phrase_bank
    from irkit.workflows.cir import train_phi

    budgets = bench.setup.budgets
    ids, paths = oti_training_images(bench, int(budgets["oti_images"]))
    features = raw_image_embeddings(bench.loaded, paths, bench.ctx.batch_size, bench.ctx.num_workers,
                                    bench.ctx.cache_dir, bench.ctx.reader)
    oti_config = OTIConfig(steps=int(budgets["oti_steps"]), batch_size=int(budgets["oti_batch_size"]),
                           seed=bench.setup.seed)
    bank = load_phrase_bank()
    log.info("searle: OTI on %d training references, %d steps each", len(ids), oti_config.steps)
    tokens = run_oti(bench.loaded, ids, features, stage_dir / "oti", oti_config, bank)
    phi = _train_phi(bench, stage_dir, "searle", budgets["searle_steps"], budgets["searle_batch_size"],
                     budgets["searle_lr"], budgets["searle_validate_every"],
                     lambda config, run, validator: train_phi("searle", bench.loaded, run, config, oti=tokens,
                                                              phrase_bank=bank, validator=validator, resume="latest"),
                     {"oti_images": len(ids), "oti_steps": oti_config.steps, "top_k_concepts": PHI_TOP_K_CONCEPTS})
    phi.update(oti_images=len(ids), oti_steps=oti_config.steps)
    method = bench.method("searle", stage_dir / phi["best_checkpoint"])
    return {"phi": phi, **_scored(bench.evaluate_everywhere(method))}


def searle_oti_stage(bench: _Bench, stage_dir: Path) -> dict[str, Any]:
    """SEARLE-OTI: OTI on every val reference (``searle_oti_steps`` steps), then evaluated."""
    from irkit.cir.evaluate import evaluate_method
    from irkit.methods.searle import OTIConfig, oti_for_splits
    from irkit.methods.textual_inversion import load_phrase_bank

    budgets = bench.setup.budgets
    config = OTIConfig(steps=int(budgets["searle_oti_steps"]), batch_size=int(budgets["oti_batch_size"]),
                       seed=bench.setup.seed)
    bank = load_phrase_bank()
    results = {}
    for dataset in BENCHMARKS:
        folder = stage_dir / f"oti-{dataset}"
        oti_for_splits(bench.ctx, bench.val_splits[dataset], folder, "references", config, bank)
        results[dataset] = evaluate_method(bench.method("searle-oti", folder), bench.ctx, bench.val_splits[dataset],
                                           bench.shared_concept(dataset))
    return {"oti_steps": config.steps, **_scored(results)}


# --------------------------------------------------------------------------- table


def zero_shot_rows(stages: Mapping[str, Any], setup: CIRBenchSetup, backbone: str) -> list[dict[str, Any]]:
    """Table rows of the baselines and the zero-shot methods, notes saying how each was made."""
    circo = "with" if setup.budgets.get("include_shared_concept") else "without"
    common = f"{backbone}; CIRCO query text {circo} shared_concept"
    rows = [table_row(name, "baseline", stages["baselines"][name]["table"], common) for name in BASELINES]
    lincir = stages["lincir"]["phi"]
    rows.append(table_row("LinCIR (phi)", "zero-shot", stages["lincir"]["table"],
                          f"{common}; phi from {lincir['num_captions']} captions ({' + '.join(TRAIN_CAPTION_FILES)}), "
                          f"{lincir['steps']} steps x batch {lincir['batch_size']}; best step {lincir['best_step']} "
                          f"on {lincir['selected_on']}"))
    searle = stages["searle"]["phi"]
    rows.append(table_row("SEARLE (phi)", "zero-shot", stages["searle"]["table"],
                          f"{common}; OTI on {searle['oti_images']} CIRR/FashionIQ train references x "
                          f"{searle['oti_steps']} steps (published 350), phi {searle['steps']} steps x batch "
                          f"{searle['batch_size']}; best step {searle['best_step']} on {searle['selected_on']}"))
    if "searle-oti" in stages:
        rows.append(table_row("SEARLE-OTI", "zero-shot", stages["searle-oti"]["table"],
                              f"{common}; OTI per val reference, {stages['searle-oti']['oti_steps']} steps "
                              "(published 350)"))
    return rows


def write_table(out_dir: Path, rows: Sequence[Mapping[str, Any]], title: str) -> tuple[Path, Path]:
    """``table.csv`` (method, group, TABLE_COLUMNS, notes) and ``table.md`` (values as fractions,
    then one note line per row), both atomic."""
    from irkit.notebook import markdown_table

    columns = ["method", "group", *TABLE_COLUMNS, "notes"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else (repr(row[c]) if isinstance(row[c], float) else row[c])
                         for c in columns])
    csv_path = out_dir / "table.csv"
    atomic_write_text(csv_path, buffer.getvalue())

    columns = ["method", "group", *TABLE_COLUMNS]
    shown = [{c: "–" if row.get(c) is None else row[c] for c in columns} for row in rows]
    lines = [f"# {title}", "", "Values are fractions in [0, 1]: FashionIQ val (mean of dress/shirt/toptee), "
             "CIRR val (reference removed; Rs@1 within img_set), CIRCO val mAP@10.", "",
             markdown_table(shown, columns).rstrip("\n")]
    lines += ["", "Notes:", ""] + [f"- **{row['method']}**: {row.get('notes', '')}" for row in rows]
    md_path = out_dir / "table.md"
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path


def run_cir_table(data_root: Path | str, out_dir: Path | str, scale: str = "full", model: str = "irkit-tiny",
                  pretrained: Optional[str] = None, checkpoint: Optional[Path | str] = None,
                  train_clip: bool = True, fusion: bool = True, seed: int = 0, workers: int = 2,
                  cache_dir: Path | str = Path(".cache/irkit"),
                  budget_overrides: Optional[Mapping[str, Any]] = None, precision: str = "auto") -> CIRTableResult:
    """Run (or resume) every stage of the CIR table into ``out_dir``; see the module docstring.

    ``checkpoint`` / ``pretrained``: the CLIP weights (the starting point of the demo CIR model
    when ``train_clip``, else used as they are). ``fusion``: add the fusion / Combiner /
    re-ranking rows (needs :mod:`irkit.experiments.fusion_rows`). ``precision``: the
    :mod:`irkit.precision` setting of every model, encoding and training stage (its resolved name is
    in ``params.json``, so a folder is never resumed in another precision).
    """
    import torch

    if pretrained and checkpoint:
        raise InputError("give either a pretrained tag or a checkpoint path, not both", field="checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise InputError("CLIP checkpoint file not found", path=checkpoint)
    if not train_clip and not (pretrained or checkpoint):
        raise InputError("--no-clip-training uses the given CLIP weights as they are, but none were given; "
                         "expected --checkpoint PATH or --pretrained TAG", field="checkpoint")
    fusion_rows = None
    if fusion:
        try:
            from irkit.experiments.fusion_rows import fusion_rows
        except ModuleNotFoundError as e:
            if e.name != "irkit.experiments.fusion_rows":
                raise
            raise InputError("the fusion rows need irkit.experiments.fusion_rows, which is not installed; "
                             "run with --skip-fusion for the zero-shot rows only", field="skip-fusion") from None
    out_dir = Path(out_dir)
    setup = CIRBenchSetup(data_root=Path(data_root), out_dir=out_dir, model=model,
                          clip_checkpoint=Path(checkpoint) if checkpoint else None, pretrained=pretrained,
                          cache_dir=Path(cache_dir), scale=scale, seed=seed, workers=workers,
                          budgets=resolve_budgets(scale, budget_overrides), precision=precision)
    resuming = claim_out_dir(out_dir, table_params(setup, train_clip, fusion))
    torch.manual_seed(seed)
    stages = _Stages(setup)
    with _out_log(out_dir):
        log.info("CIR table %s %s (scale %s, seed %d)", "resumed in" if resuming else "started in", out_dir,
                 scale, seed)
        stages.run("data", "summary.json", lambda d: ensure_cir_data(setup.data_root, scale, seed))
        if train_clip:
            clip_path = stages.run("clip", "model.safetensors", lambda d: train_demo_clip(setup, d))
            setup = replace(setup, clip_checkpoint=Path(clip_path), pretrained=None)
            backbone = f"{model} trained on the demo CIR captions ({Path(clip_path).name}" + \
                       (f", from {Path(checkpoint).name})" if checkpoint else f", from {pretrained})" if pretrained
                        else ", from random init)")
        else:
            backbone = f"{model} ({Path(checkpoint).name if checkpoint else pretrained or 'random init'}, as given)"
        bench = _Bench(setup)
        results = {"baselines": stages.run("baselines", "metrics.json", lambda d: baselines_stage(bench, d)),
                   "lincir": stages.run("lincir", "metrics.json", lambda d: lincir_stage(bench, d)),
                   "searle": stages.run("searle", "metrics.json", lambda d: searle_stage(bench, d))}
        if int(setup.budgets["searle_oti_steps"]) > 0:
            results["searle-oti"] = stages.run("searle-oti", "metrics.json", lambda d: searle_oti_stage(bench, d))
        else:
            log.info("stage searle-oti: left out (budget searle_oti_steps = 0)")
        rows = zero_shot_rows(results, setup, backbone)
        if fusion_rows is not None:
            path = out_dir / "fusion_rows.json"
            if path.is_file():
                extra = read_json(path)
            else:
                started = time.perf_counter()
                extra = fusion_rows(setup)
                atomic_write_json(path, extra, indent=2)
                stages.seconds["fusion"] = round(time.perf_counter() - started, 1)
            rows += extra
        _check_rows(rows)
        significance = write_significance(bench, results, rows)
        times_path = out_dir / "stage_times.json"
        times = {**(read_json(times_path) if times_path.is_file() else {}), **stages.seconds}
        atomic_write_json(times_path, times, indent=2)
        write_table(out_dir, rows, f"CIR comparison ({scale} scale, seed {seed}, {backbone})")
        log.info("table written: %s", out_dir / "table.md")
    return CIRTableResult(out_dir, rows, setup.clip_checkpoint, times, significance)


def write_significance(bench: Any, results: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Paired bootstrap of the acceptance comparisons (:mod:`irkit.experiments.significance`),
    recomputed on every call (the rows may have grown) into ``significance.json`` / ``.md``."""
    from irkit.experiments.significance import (
        REPORT_FILE,
        RESULT_FILE,
        significance_markdown,
        significance_stage,
    )

    out_dir = Path(bench.setup.out_dir)
    result = significance_stage(bench, results, rows)
    atomic_write_json(out_dir / RESULT_FILE, result, indent=2)
    atomic_write_text(out_dir / REPORT_FILE, significance_markdown(result))
    log.info("significance: %d paired comparisons written to %s", len(result["comparisons"]), out_dir / REPORT_FILE)
    return result


def _check_rows(rows: Sequence[Mapping[str, Any]]) -> None:
    for row in rows:
        for column in TABLE_COLUMNS:
            value = row.get(column)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"row {row.get('method')!r}: {column} = {value}; expected a fraction in [0, 1]")
