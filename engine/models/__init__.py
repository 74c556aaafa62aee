"""The models: one record per family in families/ (SD1.x/SD2 and SDXL today), loading diffusers folders and single
files (loading.py), LoRA adapters, export formats and the load self-check (lora*.py), LDM key conversion
(ldm_convert.py), tiny random models for tests and the demo (tiny.py).

May import: config, the helpers. Outside families/, no code tests a family's name.
"""
