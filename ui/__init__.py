"""Easel's Gradio GUI: one module per tab, fields.py binds widgets to preset keys, runner.py talks to the engine.

Torch-free by contract (tests/test_gui_boundary.py): the GUI starts in about two seconds and holds no GPU memory.
"""
