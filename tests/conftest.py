"""Shared test set-up. Nothing may reach the network: models are tiny, random and built on disk by the tests."""
import os
import sys
from pathlib import Path

# tests/ is a package (see __init__.py), so pytest puts the Easel folder on sys.path, not tests/: the shared test
# helpers (dataset_factory, run_control, ...) are imported by their bare names, so put tests/ there too.
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ["HF_HUB_OFFLINE"] = "1"           # before anything imports huggingface_hub
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from threads, and on CI's 2 shared cores thread contention made tests 4x slower.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    if not os.environ.get(_var):
        os.environ[_var] = "1"


def pytest_report_header(config):
    return f"threads per test process: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"


def pytest_terminal_summary(terminalreporter):
    """One line when the browser tests skipped (a missing Chromium): a quiet 's' is easy to miss."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "e2e" in str(getattr(r, "nodeid", "")) or
               "e2e" in str(getattr(r, "fspath", ""))]
    if skipped:
        reason = skipped[0].longrepr[-1] if isinstance(skipped[0].longrepr, tuple) else str(skipped[0].longrepr)
        terminalreporter.write_line(f"browser tests skipped: {reason.removeprefix('Skipped: ')}", yellow=True)
