"""One engine per run folder: RUN_DIR/engine.lock holds the PID and start time of the engine that owns the run.

    with RunLock(run_dir) as lock:      # raises RunLocked when a live engine holds it
        lock.took_over                  # the stale lock it replaced (a crashed engine's), or None

Taken with O_EXCL, so two engines starting at the same moment cannot both win. A lock whose process is gone, or
whose PID now belongs to another program (its start time differs), is stale and taken over; the takeover itself
happens under a second O_EXCL file (engine.lock.takeover), so two engines finding the same stale lock cannot both
replace it. Torch-free.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "engine.lock"
ACCESS_DENIED = -1.0  # process_start_time() of a process this account may not inspect


class RunLocked(Exception):
    """Another engine, still running, trains this run folder."""

    def __init__(self, run_dir: Path, owner: dict):
        self.run_dir, self.owner = run_dir, owner
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
        host = owner.get("host")
        elsewhere = host not in (None, socket.gethostname())
        super().__init__(
            f"{run_dir} is being trained by another engine (process {owner.get('pid')}"
            + (f" on the computer {host}" if elsewhere else "") + f", started {since}). Wait for it to finish, or "
            f"stop it (the GUI's Stop, or create the file {run_dir / 'control' / 'stop'}), then try again."
            + (f" If no engine runs on {host} any more (a container or a renamed PC), delete "
               f"{run_dir / LOCK_NAME}." if elsewhere else ""))


def process_start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if there is no such process."""
    import psutil  # installed with accelerate

    try:
        return psutil.Process(pid).create_time()
    except psutil.AccessDenied:
        return ACCESS_DENIED  # another account's process: alive, and not ours to judge
    except (psutil.NoSuchProcess, ValueError):
        return None


def _alive(owner: dict) -> bool:
    if owner.get("taking"):
        return True
    if owner.get("host") not in (None, socket.gethostname()):
        return True  # another computer's engine (a shared folder): it cannot be checked, so it is respected
    started = process_start_time(int(owner.get("pid") or -1))
    if started == ACCESS_DENIED:
        return True
    return started is not None and abs(started - float(owner.get("started", 0))) < 2.0


class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.run_dir = Path(run_dir)
        self.took_over: dict | None = None
        self.mine = {"pid": os.getpid(), "started": process_start_time(os.getpid()) or time.time(),
                     "host": socket.gethostname()}

    def __enter__(self) -> "RunLock":
        data = json.dumps(self.mine).encode("utf-8")
        for _ in range(50):  # a stale lock is replaced (by us or a racing engine), then the create is tried again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read()
                if owner is not None and _alive(owner):
                    raise RunLocked(self.run_dir, owner) from None
                self._remove_stale()
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self
        raise RunLocked(self.run_dir, self._read() or {})

    def _remove_stale(self) -> None:
        """Delete a stale lock, under engine.lock.takeover: of two engines that found it, one removes it, the
        other waits and then finds the winner's live lock."""
        guard = self.path.with_name(self.path.name + ".takeover")
        try:
            os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > 10:  # left by an engine killed mid-takeover
                    guard.unlink(missing_ok=True)
            except OSError:
                pass
            time.sleep(0.05)
            return
        try:
            # again, under the guard: it may be a live lock by now. A missing file is left alone: another engine
            # may create its lock right now (that needs no guard), and unlinking here would delete it.
            owner = self._read()
            if owner is not None and not _alive(owner):
                self.took_over = {"pid": None} if owner.get("unreadable") else owner
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # empty or half-written: an engine taking the lock this very moment, or one killed while doing so
            try:
                fresh = time.time() - self.path.stat().st_mtime < 5.0
            except OSError:
                return None
            if fresh:
                return {"pid": None, "started": time.time(), "host": None, "taking": True}
            return {"pid": None, "started": 0.0, "host": None, "unreadable": True}  # stale: taken over

    def __exit__(self, *exc) -> None:
        if self._read() == self.mine:
            self.path.unlink(missing_ok=True)
