"""Reproducible experiment drivers that call only into the irkit library.

``cir_table``: the composed-retrieval comparison table (zero-shot, fusion, re-ranking) on one
set of CIR benchmarks with one CLIP model.
"""
