"""The training data: dataset layouts and caption files, image probing, buckets, the run plan arithmetic (how many
steps, checkpoints and samples a dataset makes), training samples and batches, latent/text caches, the undo journal.

May import: config, the helpers. Torch only in samples.py and cache.py (the rest serves the GUI torch-free).
"""
