"""Workflows: one wiring per task, called from every entry point (CLI, experiments, notebooks).

They sit above the engine and the methods (:mod:`irkit.cir`, :mod:`irkit.methods`) and below
the entry points; nothing below imports them.
"""
