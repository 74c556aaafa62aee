"""Sampling: samplers by name (samplers.py) and rendering the samples of a run at each LoRA strength, with
A1111-readable PNG metadata (render.py).

May import: models, config, the helpers.
"""
