"""Captions: captioning a dataset with a local model (captioning.py; one file per captioner in captioners/) and
bulk edits with preview, backup and undo (edit.py, which also holds the trigger-word rules).

May import: data (layout, journal), the helpers. Models are imported inside the captioner that needs them.
"""
