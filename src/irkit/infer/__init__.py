"""Traffic challenge inference: per-gallery top-10 retrieval and the submission merge."""

from irkit.infer.merge import merge_results  # noqa: F401
from irkit.infer.traffic import infer_traffic, prompt_text, query_kind  # noqa: F401
