"""Easel's tests, a regular package on purpose: flow-matching's wheel installs its own top-level `tests` package into
site-packages, and a regular package found anywhere on sys.path beats a folder without __init__.py, so without this
file `from tests.dataset_factory import ...` would look inside flow-matching's tests."""
