"""Trainers: CLIP fine-tuning through open_clip_train (:mod:`irkit.train.clip`) and a small
generic step-based loop for heads on frozen features (:mod:`irkit.train.loop`)."""
