"""An embedding collection (clip-retrieval layout, :mod:`irkit.collection`) as a query-less
:class:`CIRSplit`, so any registered CIR method can rank its images (the search app).

Gallery ids are the collection's row numbers as strings (``"0"``, ``"1"``, ...), in row order;
each id maps to the row's ``image_path``. The dataset has no registered spec, so it is ranked
under the generic protocol.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from irkit.collection import read_collection_info, read_embedding_collection
from irkit.data.records import CIRSplit
from irkit.data.registry import register_dataset
from irkit.errors import InputError

#: The registry name of collection splits (``CIRSplit.dataset``).
COLLECTION_DATASET = "collection"


@register_dataset(COLLECTION_DATASET)
def load_collection_split(root: os.PathLike | str, split: str = "all", **options: Any) -> CIRSplit:
    """The images of the collection at ``root`` as a gallery without queries; ``split`` is a label."""
    if options:
        raise InputError(f"a collection takes no loader options, got {sorted(options)}", field="loader-option")
    root = Path(root)
    _, metadata = read_embedding_collection(root)
    read_collection_info(root)  # a malformed irkit_collection.json is reported here, not later
    ids = [str(row) for row in range(len(metadata))]
    paths = {image_id: Path(str(path)) for image_id, path in zip(ids, metadata["image_path"].tolist())}
    return CIRSplit(dataset=COLLECTION_DATASET, split=split, root=root, queries=[], gallery=ids, image_paths=paths)
