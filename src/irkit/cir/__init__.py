"""The composed-image-retrieval engine: method registry and context, split loading, evaluation
(aggregate and per-query), submissions, top-K files and one training set-up for every trainable
part. Per-benchmark rules come from :mod:`irkit.benchmarks`; the methods live in
:mod:`irkit.methods`, one module each, behind :func:`create_method`.
"""

from irkit.cir.context import CIRContext, l2_normalize  # noqa: F401
from irkit.cir.evaluate import (  # noqa: F401
    evaluate_method,
    load_cir_splits,
    run_method,
    score_prediction_files,
    write_method_submission,
)
from irkit.cir.registry import (  # noqa: F401
    CIRMethod,
    EmbeddingMethod,
    RankingMethod,
    create_method,
    list_methods,
    method_class,
    method_options,
    register_method,
)
