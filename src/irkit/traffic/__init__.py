"""The traffic text->image challenge task (methods.md §A); its loader is :mod:`irkit.data.traffic`.

* :mod:`~irkit.traffic.attributes` — vehicle attribute parsing, ``car_attribute.json`` vocabulary
* :mod:`~irkit.traffic.augment` — zero-shot caption augmentation of incomplete vehicle labels
* :mod:`~irkit.traffic.training_csv` — open_clip training CSV (+ separator sidecar) from labels
* :mod:`~irkit.traffic.inference` — per-gallery top-10 retrieval, prompt variants and their val selection
* :mod:`~irkit.traffic.merge` — per-gallery results -> ``submission.json``
"""
