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
"""
