"""The composed-retrieval methods, one module each, registered with
:func:`irkit.cir.registry.register_method` (``irkit.cir.create_method(name, **options)``):
baselines, SEARLE / SEARLE-OTI, LinCIR, MagicLens-style fusion (+ vision projector), the
CLIP4Cir Combiner and two-stage re-ranking."""
