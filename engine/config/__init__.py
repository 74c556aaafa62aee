"""Presets as typed data: the schema (every key with its default, unit, range and help), loading with overrides
and migrations, checks across fields, saving. Torch-free: the GUI imports it.

May import: the helpers (engine.atomic, engine.registry). Nothing else of the engine.
"""
