"""One spec per benchmark (CIRR, CIRCO, FashionIQ, the traffic challenge, ...): how it is loaded,
ranked, scored, combined over its parts and written for its test server.

``get_benchmark(name)`` returns the registered :class:`Benchmark`; the CIR engine
(:mod:`irkit.cir`) asks it for everything that differs between benchmarks, so no other module
compares dataset names. A new benchmark is a loader in :mod:`irkit.data` plus a module here
that registers a :class:`Benchmark` subclass.
"""

from irkit.benchmarks.spec import (  # noqa: F401
    FRACTION,
    PERCENT,
    Benchmark,
    benchmark_of,
    get_benchmark,
    list_benchmarks,
    register_benchmark,
)
