"""The models. One folder per family in families/<name>/ (its capabilities, record, loading, key-name maps, memory
model, tiny builder, detection; families/__init__.py is the registry), and what families share, taking a family's
data as arguments: loading diffusers folders and single files (loading.py), how the frozen base is stored
(base_storage.py: fp8, int8/nf4) and block swap (block_swap.py), LoRA adapters, each family's kohya naming, export
formats and the load self-check (lora*.py), "will it fit" from the files' headers (fit/), tiny random models for
tests and the demo (tiny.py, tiny_parts.py).

May import: config, the families' data, the helpers. Outside families/, no code tests a family's name.
"""
