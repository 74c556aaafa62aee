"""The GUI process never imports torch (it starts fast and holds no GPU memory), and gui.py's launch flags."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# torch (and the heavy libraries that pull it in) are made unimportable: any import of them fails loudly.
BUILD_WITHOUT_TORCH = """
import sys
for name in ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes"):
    sys.modules[name] = None
sys.path.insert(0, {root!r})
import gui
app = gui.make_app(__import__("pathlib").Path({runs!r}))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers") and sys.modules[m])
print("HEAVY", heavy)
print("TABS", [b.label for b in app.blocks.values() if type(b).__name__ == "Tab"])
"""


def test_gui_builds_without_torch(tmp_path):
    script = BUILD_WITHOUT_TORCH.format(root=str(ROOT), runs=str(tmp_path / "runs"))
    out = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), capture_output=True, text=True,
                         encoding="utf-8", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout
    for tab in ("Dataset", "Captions", "Training", "Optimizer & LR", "Samples", "Run", "Runs", "System", "YAML"):
        assert f"'{tab}'" in out.stdout


def test_launch_flags(capsys):
    import gui
    args = gui.parse_args([])
    assert args.port == 7860 and not args.no_browser and not args.listen
    args = gui.parse_args(["--no-browser", "--port", "7999", "--listen", "--runs-dir", "D:/Easel runs"])
    assert args.no_browser and args.port == 7999 and args.listen and args.runs_dir == Path("D:/Easel runs")


def test_runs_dir_sends_every_run_there_else_runs_follow_the_preset(tmp_path):
    import gui
    from engine.config.load import preset_from_dict
    preset = preset_from_dict({"output": {"dir": str(tmp_path / "preset runs")}})
    ctx = gui.make_context(gui.parse_args(["--runs-dir", str(tmp_path / "mine")]).runs_dir)
    assert ctx.runs_root == (tmp_path / "mine").resolve() and ctx.runs_root_for(preset) == ctx.runs_root
    ctx = gui.make_context(gui.parse_args([]).runs_dir)
    assert ctx.runs_root_for(preset) == tmp_path / "preset runs"


class FakeApp:
    """Records what gui.launch passes to Gradio's launch."""

    class easel_ctx:
        allowed_paths = ["/runs"]

    def queue(self, **kw):
        return self

    def launch(self, **kw):
        self.kw = kw


def test_listen_prints_a_warning_and_binds_everywhere_only_then(capsys):
    import gui
    local = FakeApp()
    gui.launch(local, gui.parse_args(["--no-browser", "--port", "7999"]), block=False)
    assert local.kw["server_name"] == "127.0.0.1" and local.kw["inbrowser"] is False
    assert local.kw["allowed_paths"] == ["/runs"] and "WARNING" not in capsys.readouterr().err
    wide = FakeApp()
    gui.launch(wide, gui.parse_args(["--listen"]), block=False)
    assert wide.kw["server_name"] == "0.0.0.0" and wide.kw["inbrowser"] is True
    assert "WARNING: --listen serves Easel to your whole network" in capsys.readouterr().err
