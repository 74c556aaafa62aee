"""`python -m engine tensorboard [RUNS]`: TensorBoard over the runs folder (each run writes runs/<run>/tensorboard/),
on 127.0.0.1 only (nothing on the network sees it), the URL printed; Ctrl+C stops it."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.runs import runs_root


def start(logdir: Path, port: int = 0) -> str:
    """Start TensorBoard's server in this process (a background thread) and return its URL. port 0: a free one."""
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port),
                          "--reload_interval", "5"])
    return board.launch()


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine tensorboard", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="?", type=Path, help="a runs folder or one run folder (default: output.dir "
                                                           "'runs' in the Easel folder)")
    parser.add_argument("--port", type=int, default=6006, help="0 picks a free port")
    args = parser.parse_args(argv)
    logdir = args.runs or runs_root("runs")
    if not logdir.is_dir():
        print(f"error: no such folder: {logdir} (train something first, or name a runs folder)", file=sys.stderr)
        return 2
    try:
        url = start(logdir, args.port)
    except Exception as e:  # noqa: BLE001 - a port in use is the usual cause; say it in words
        print(f"error: TensorBoard did not start on port {args.port}: {e}\n  hint: use --port 0 (a free port) "
              f"or close the other TensorBoard.", file=sys.stderr)
        return 1
    print(f"TensorBoard for {logdir}: {url}  (Ctrl+C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
