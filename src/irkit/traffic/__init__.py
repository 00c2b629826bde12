"""The traffic text->image challenge task (docs/methods.md §A); its loader is :mod:`irkit.data.traffic`.

* :mod:`~irkit.traffic.attributes` — vehicle attribute parsing, ``car_attribute.json`` vocabulary
* :mod:`~irkit.traffic.augment` — zero-shot caption augmentation of incomplete vehicle labels
* :mod:`~irkit.traffic.training_csv` — open_clip training CSV (+ separator sidecar) from labels
* :mod:`~irkit.traffic.inference` — per-gallery top-10 retrieval, prompt variants and their val selection
* :mod:`~irkit.traffic.merge` — per-gallery results -> ``submission.json``
* :mod:`~irkit.traffic.stages` — the pipeline's stages (data, captions, training, inference, merge, score)
* :mod:`~irkit.traffic.pipeline` — every stage in order in one call (reproduce, quick review)
* :mod:`~irkit.traffic.report` — tables and figures the notebooks show after each stage
* :mod:`~irkit.traffic.best_result` — the best reproduce run copied for review

:data:`DEFAULT_PROMPT` is the one default of the inference prompt: ``irkit infer traffic
--prompt``, :class:`~irkit.traffic.stages.TrafficRunParams` (pipeline, workflows) and the
notebooks' ``parameters`` cells (a literal there, kept equal by a test) all use it.
"""

#: inference prompt variants: the published suffix, the published non-prompt strip, the query as given
PROMPT_MODES = ("suffix", "strip", "none")
#: ``"auto"``: the best of :data:`PROMPT_MODES` on the labelled val split, never on test
PROMPT_AUTO = "auto"
#: the default prompt everywhere (CLI, pipeline, notebooks)
DEFAULT_PROMPT = PROMPT_AUTO
