"""Evaluation: protocols (embeddings/rankings -> metrics) and submission files.

- :mod:`irkit.eval.protocols`: ``rank_split``, ``rank_cirr``, ``evaluate_rankings``,
  ``evaluate_embeddings``, ``combine_fashioniq``, ``evaluate_traffic_submission``,
  ``traffic_rank_statistics``.
- :mod:`irkit.eval.submissions`: writers/readers of the CIRR, CIRCO, FashionIQ and traffic
  submission formats and ``evaluate_prediction_files``.
"""

from irkit.eval.protocols import (  # noqa: F401
    combine_fashioniq,
    evaluate_embeddings,
    evaluate_rankings,
    evaluate_traffic_submission,
    rank_cirr,
    rank_split,
    traffic_ground_truth_from_labels,
    traffic_rank_statistics,
)
from irkit.eval.submissions import (  # noqa: F401
    cirr_submission_paths,
    evaluate_prediction_files,
    read_circo_submission,
    read_cirr_submission,
    read_fashioniq_submission,
    read_traffic_submission,
    write_circo_submission,
    write_cirr_submission,
    write_fashioniq_submission,
    write_submission_from_embeddings,
    write_traffic_submission,
)
