"""Easel's window: `python gui.py` serves the app on 127.0.0.1 and opens it in the browser.

    python gui.py [--port 7860] [--no-browser] [--runs-dir FOLDER] [--listen]

The GUI imports no torch (it starts in about two seconds); training, captioning and the demo run in engine
subprocesses that keep going when the browser closes. --listen serves the app to the whole network and needs a
deliberate flag: anyone who can reach the port can read your datasets and start runs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:  # `python C:\path with spaces\gui.py` from any folder
    sys.path.insert(0, str(ROOT))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python gui.py", description="Easel: train LoRAs on your own GPU.")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860; the next free one if "
                   "taken)")
    p.add_argument("--no-browser", action="store_true", help="do not open the browser")
    p.add_argument("--runs-dir", type=Path, default=None, help="put every run folder here (default: each preset's "
                   "output.dir, runs/ unless the preset says otherwise)")
    p.add_argument("--listen", action="store_true", help="serve on all network interfaces (0.0.0.0) instead of "
                   "this computer only; prints a warning")
    return p.parse_args(argv)


def make_context(runs_dir: Path | None = None):
    """--runs-dir given: every run goes there, whatever the preset's output.dir says; else runs follow the preset."""
    from ui.app import AppContext
    if runs_dir is None:
        return AppContext()
    return AppContext(runs_root=Path(runs_dir).resolve(), use_preset_output_dir=False)


def make_app(runs_dir: Path | None = None):
    from ui.app import build_app
    return build_app(make_context(runs_dir))


def launch(app, args: argparse.Namespace, block: bool = True):
    from ui.app import CSS
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    if args.listen:
        print("WARNING: --listen serves Easel to your whole network. Anyone who can reach this computer on port "
              f"{args.port} can see your dataset and samples and start or stop training. Use it only on a network "
              "you trust.", file=sys.stderr, flush=True)
    port = _free_port(host, args.port)
    # quiet: Gradio's own banner tells the user to edit code ("set `share=True` in `launch()`"); this line says it all
    print(f"Easel is running at http://127.0.0.1:{port}/ (it opens in your browser; close this window to quit).",
          flush=True)
    return app.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=port, inbrowser=not args.no_browser,
        allowed_paths=app.easel_ctx.allowed_paths, css=CSS, prevent_thread_lock=not block, quiet=True,
        show_error=True, footer_links=[])


def _free_port(host: str, port: int) -> int:
    """The asked port, or the next free one (a second Easel, or another app on 7860)."""
    import socket
    for candidate in range(port, port + 20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1" if host == "0.0.0.0" else host, candidate)) != 0:
                return candidate
    return port


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    app = make_app(args.runs_dir)
    launch(app, args, block=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
