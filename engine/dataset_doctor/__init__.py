"""The dataset doctor: one check per problem (checks.py), the report (report.py), `python -m engine check`
(check_dataset.py) and the fixes it offers, journaled and undoable (fixes.py). Torch-free: the GUI imports it.

May import: captions, data, config, the helpers.
"""
