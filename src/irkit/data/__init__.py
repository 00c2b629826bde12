"""Dataset loaders (published layouts), records and the demo data generator."""

from irkit.data.records import CaptionRecord, CIRQuery, CIRSplit, TrafficLabel, TrafficSplit  # noqa: F401
from irkit.data.registry import list_datasets, load_dataset, register_dataset  # noqa: F401
