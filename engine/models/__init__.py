"""The models: one record per family in families/ (SD1.x/SD2, SDXL, FLUX.1), loading diffusers folders and single
files (loading.py; FLUX's ComfyUI files: flux/loading.py, BFL weight names: flux/bfl_names.py), how the frozen base is
stored (base_storage.py: fp8, int8/nf4) and block swap (block_swap.py), LoRA adapters, export formats and the load
self-check (lora*.py; FLUX's BFL LoRA names: lora_names.py), "will it fit" from the files' headers (fit.py), LDM key
conversion (ldm_convert.py), tiny random models for tests and the demo (tiny.py).

May import: config, the helpers. Outside families/, no code tests a family's name.
"""
