"""Retrieval methods as modules, one registry: ``create_method(name, **options)``.

Every composed-retrieval method maps a :class:`~irkit.data.records.CIRSplit` to query
embeddings [Q, D] and gallery embeddings [G, D] (both L2-normalised) in one space; the
protocols in :mod:`irkit.eval` turn those into rankings and metrics, so a method never
implements evaluation itself.
"""

from irkit.methods.base import (  # noqa: F401
    CIRContext,
    CIRMethod,
    create_method,
    list_methods,
    method_class,
    register_method,
)
