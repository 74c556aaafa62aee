"""Easel's training engine: `python -m engine <command>` (see __main__.py). It never imports gradio or ui.

Top level: the entry points (__main__, cli, demo, lr_preview, system_doctor, tensorboard_view, runs: run folders)
and the helpers every part may use (atomic: atomic writes, events: events.jsonl, registry: lookups with suggestions,
failures: errors in the user's words, lock: one engine per run folder). The parts, lowest first:
the families' data (models/families: registry, records' types, caps.py) → config → data → captions →
dataset_doctor; models → sampling → training → rl; system (what this PC is, for system_doctor).
Each part's __init__.py says what it may import; tests/import_rules.py enforces it.
"""
