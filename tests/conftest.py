"""Shared test set-up. Nothing may reach the network: models are tiny, random and built on disk by the tests.

The fixtures every file may use: tiny_model(family) and demo_preset (built once per session, read-only), shapes (the
demo's pictures), reward_server and fake_nvidia_smi; the helpers behind them and the rest that files share are in
tests/support/ (train_run, the tiny DiT settings)."""
import os
import shutil
import sys
from pathlib import Path

import pytest

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


# ------------------------------------------------------------------------------ shared fixtures (tests/support/)
# Session-scoped ones are built once per session (once per worker under pytest-xdist) and only read by the tests:
# a run writes into its own run folder under the test's tmp_path; a test that needs a changed model copies it.

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family) -> the folder of the tiny random "sd15", "sd2", "sdxl" or "flux" model (seed 0), built on
    first use, in a path with a space and a non-ASCII letter as users' paths have."""
    from support.models import TinyModels

    return TinyModels(tmp_path_factory.mktemp("tiny models ü"))


@pytest.fixture(scope="session")
def demo_preset(tmp_path_factory, tiny_model):
    """The demo's preset file as `python -m engine demo` writes it (presets/demo.yaml with its paths filled in): the
    tiny SD1.5 model and the 16 captioned shapes, output.dir inside the folder (tests give runs their own root)."""
    from engine.demo import prepare

    folder = tmp_path_factory.mktemp("demo folder ü")
    shutil.copytree(tiny_model("sd15"), folder / "model")  # prepare() keeps a model already there: no second build
    return prepare(folder)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """The demo's 16 captioned shape pictures (engine.demo.make_dataset) on their own, for runs of other models."""
    from engine.demo import make_dataset

    return make_dataset(tmp_path_factory.mktemp("shapes ü") / "data")


@pytest.fixture
def reward_server():
    """reward_server(statuses=(), error_text="", answer=None) -> a running RewardServer (tests/support/
    reward_server.py) on 127.0.0.1; every one started is closed when the test ends."""
    from support.reward_server import RewardServer

    servers = []

    def start(**options):
        servers.append(RewardServer(**options))
        return servers[-1]
    yield start
    for server in servers:
        server.close()


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """fake_nvidia_smi(body): from now on in this test, `nvidia-smi` on PATH is a bash script running `body`
    (tests/support/nvidia_smi.py); a second call replaces it."""
    from support.nvidia_smi import write_fake_nvidia_smi

    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return lambda body: write_fake_nvidia_smi(bin_dir, body)
