"""Start, tail, stop and re-attach to engine runs (torch-free; the GUI's only link to training).

The engine runs in its own process, per DESIGN.md: `python -m engine train RUN_DIR`, output to RUN_DIR/engine.log
(a file, not a pipe: no deadlock and no console-encoding trouble on Windows). The GUI only drops files into
RUN_DIR/control/ and reads RUN_DIR/events.jsonl, so closing the browser or restarting the GUI never stops a run.

One run at a time: RUNS_ROOT/.easel-run.lock names the run folder and the engine's pid while it lives.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.events import read_all

LOCK_NAME = ".easel-run.lock"
PID_NAME = "engine.pid"
LOG_NAME = "engine.log"
TERMINAL_KINDS = ("done", "stopped", "error")
CONTROL_FILES = ("stop", "sample_now", "save_now")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class RunBusy(RuntimeError):
    """Another run is still training (one run per GPU)."""


# --- processes ---------------------------------------------------------------------------------------------------------
def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes
        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A child that exited but was not reaped still answers kill(0); Linux tells us its state."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


_children: dict[int, subprocess.Popen] = {}  # runs this GUI process started: reaped so they never linger as zombies


def _reap() -> None:
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            _children.pop(pid, None)  # the stop thread (runner.stop) reaps too


def spawn_engine(args: list[str], log_path: Path, cwd: Path = PROJECT_ROOT) -> subprocess.Popen:
    """`python -m engine ARGS` with stdout+stderr to log_path; never a shell, its own process group."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if os.name == "nt" else 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "engine", *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=str(cwd), env=env, creationflags=flags,
                                start_new_session=os.name != "nt")
    _children[proc.pid] = proc
    return proc


# --- the run lock --------------------------------------------------------------------------------------------------------
def read_pid(run_dir: Path) -> int | None:
    try:
        return int(json.loads((Path(run_dir) / PID_NAME).read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _started_at(run_dir: Path) -> float:
    try:
        return float(json.loads((Path(run_dir) / PID_NAME).read_text(encoding="utf-8")).get("started", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def is_finished(run_dir: Path) -> bool:
    """The engine process now recorded for run_dir has written its last event (done, stopped or error). Events of
    an earlier process in the same folder (before a resume) do not count."""
    # The pid record is written right after the spawn, long before the new engine's first event (its imports alone
    # take seconds); event times are rounded to the millisecond.
    since = _started_at(run_dir) - 0.001
    return any(e.get("kind") in TERMINAL_KINDS and e.get("t", 0) >= since
               for e in read_all(Path(run_dir) / "events.jsonl"))


def is_running(run_dir: Path) -> bool:
    _reap()
    return pid_alive(read_pid(run_dir)) and not is_finished(run_dir)


def active_run(runs_root: Path) -> Path | None:
    """The run folder that is training now, found from the lock, else by scanning (newest first)."""
    lock = Path(runs_root) / LOCK_NAME
    try:
        locked = Path(json.loads(lock.read_text(encoding="utf-8"))["run_dir"])
        if is_running(locked):
            return locked
    except (OSError, ValueError, KeyError, TypeError):
        pass
    lock.unlink(missing_ok=True)
    from engine.runs import list_runs
    return next((r for r in list_runs(runs_root) if is_running(r)), None)


def check_idle(*runs_roots: Path) -> None:
    """Raise RunBusy if a run trains now under any of runs_roots (the GUI's lock folder, the run's own folder)."""
    for root in dict.fromkeys(Path(r).resolve() for r in runs_roots):
        busy = active_run(root)
        if busy is not None:
            raise RunBusy(f"A run is still training: {busy.name}. Stop it first (one run at a time per GPU).")


def start_run(run_dir: Path, runs_root: Path, resume: bool = False) -> subprocess.Popen:
    """Start training in run_dir (a new run folder, or a stopped one with resume=True). The lock goes in runs_root
    (the GUI's one lock, wherever the run folder is) and names run_dir."""
    run_dir = Path(run_dir)
    check_idle(runs_root, run_dir.parent)
    if resume:  # the GUI tails from the end of the old events, so the new process's events are what it shows
        for name in CONTROL_FILES:
            (run_dir / "control" / name).unlink(missing_ok=True)
    args = ["train", "--resume", str(run_dir)] if resume else ["train", str(run_dir)]
    proc = spawn_engine(args, run_dir / LOG_NAME)
    record = json.dumps({"pid": proc.pid, "run_dir": str(run_dir), "started": time.time()})
    (run_dir / PID_NAME).write_text(record, encoding="utf-8")
    Path(runs_root).mkdir(parents=True, exist_ok=True)
    (Path(runs_root) / LOCK_NAME).write_text(record, encoding="utf-8")
    return proc


def request(run_dir: Path, what: str) -> None:
    """Drop control/<what> (stop, sample_now, save_now); the engine acts on it at the next step boundary."""
    if what not in CONTROL_FILES:
        raise ValueError(f"unknown request {what!r}; one of {', '.join(CONTROL_FILES)}")
    control = Path(run_dir) / "control"
    control.mkdir(parents=True, exist_ok=True)
    (control / what).touch()


def stop(run_dir: Path, timeout_s: float) -> threading.Thread:
    """Ask the engine to stop; a daemon thread of this (GUI) process kills it if it has not exited after timeout_s,
    whether or not a browser tab is open. A process started later in the folder (Resume) is left alone."""
    request(run_dir, "stop")
    pid, deadline = read_pid(run_dir), time.time() + timeout_s

    def kill_when_late():
        while read_pid(run_dir) == pid and is_running(run_dir):
            if time.time() >= deadline:
                kill(run_dir)
                return
            time.sleep(min(0.5, max(0.05, deadline - time.time())))

    thread = threading.Thread(target=kill_when_late, name=f"easel-stop-{pid}", daemon=True)
    thread.start()
    return thread


def kill(run_dir: Path) -> bool:
    """Force-stop the engine (after a graceful stop timed out). True if a process was killed."""
    pid = read_pid(run_dir)
    if not pid_alive(pid):
        return False
    if os.name == "nt":
        subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)  # its own session: takes any worker processes with it
        except (ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        _reap()
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    return True


def stop_deadline_passed(stop_requested_at: float | None, timeout_s: float) -> bool:
    return stop_requested_at is not None and time.time() - stop_requested_at > timeout_s
