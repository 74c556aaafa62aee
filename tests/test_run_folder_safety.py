"""No dead ends in a run folder: stray .tmp files never count, a refused resume decides before the model loads,
and one engine at a time trains a run folder (a lock; a stale one is taken over)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import cli
from engine.config.load import load_preset
from engine.events import read_all
from engine.lock import LOCK_NAME, RunLock, RunLocked, process_start_time
from engine.runs import create_run_dir
from engine.training import loop as train

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["sampling.prompts=[]", "training.max_steps=2", "output.save_every_n_steps=0", "output.formats=[kohya]"]


@pytest.fixture
def run_dir(demo_preset, tmp_path):
    preset = load_preset(demo_preset, QUICK)
    return create_run_dir(preset, root=tmp_path / "runs")


def kinds(run_dir: Path) -> list[str]:
    return [e["kind"] for e in read_all(run_dir / "events.jsonl")]


def test_a_stray_state_tmp_neither_makes_a_run_look_trained_nor_survives_the_next_start(run_dir, capsys):
    (run_dir / "state" / "state.pt.tmp").write_bytes(b"half a state: the engine was killed mid-save")
    (run_dir / "checkpoints" / "demo-step000001.safetensors.tmp").write_bytes(b"half a LoRA")
    assert cli.train([str(run_dir)]) == 0, capsys.readouterr().err
    events = read_all(run_dir / "events.jsonl")
    assert events[-1]["kind"] == "done"
    assert any(e["kind"] == "warning" and "unfinished file" in e["message"] for e in events)
    assert not list(run_dir.rglob("*.tmp"))


def test_a_refused_resume_decides_before_loading_the_model(run_dir, capsys):
    (run_dir / "state" / "state.pt.tmp").write_bytes(b"not a state")
    assert cli.train(["--resume", str(run_dir)]) == 1
    events = read_all(run_dir / "events.jsonl")
    assert events[-1]["kind"] == "error" and "Nothing to resume" in events[-1]["message"]
    assert "python -m engine train" in events[-1]["hint"]
    assert not any(e["kind"] in ("started", "status") for e in events), "the model must not load first"


def test_a_live_engines_lock_is_respected(run_dir, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = None
        for _ in range(50):  # the process table has it a moment after the spawn
            started = process_start_time(holder.pid)
            if started:
                break
            time.sleep(0.1)
        (run_dir / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "started": started,
                                                     "host": socket.gethostname()}))
        assert train.run(run_dir) == 2
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err and "another engine" in err
        assert not (run_dir / "events.jsonl").exists(), "the refused engine must not write into the live run's events"
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale now, and the next engine takes it over with a warning
    assert train.run(run_dir) == 0
    events = read_all(run_dir / "events.jsonl")
    assert any(e["kind"] == "warning" and "no longer running" in e["message"] for e in events)
    assert not (run_dir / LOCK_NAME).exists(), "the lock goes with the engine"


def test_a_reused_pid_does_not_hold_the_lock(tmp_path):
    # the PID is alive (this test's own process) but started at another time: another program got that PID
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "started": 1.0, "host": None}))
    with RunLock(tmp_path) as lock:
        assert lock.took_over["started"] == 1.0
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_second_lock_on_the_same_folder_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match="another engine"):
            RunLock(tmp_path).__enter__()


def test_two_engines_started_together_train_the_folder_once(run_dir):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "engine", "train", str(run_dir)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    refused = next(err for (out, err), p in zip(outs, procs) if p.returncode != 0)
    assert codes == [0, 2], outs
    assert "another engine" in refused or "has already trained" in refused
    assert kinds(run_dir).count("started") == 1 and kinds(run_dir)[-1] == "done"


def test_two_engines_finding_the_same_stale_lock_do_not_both_take_it(tmp_path):
    import threading

    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999_999_999, "started": 1.0, "host": None}))
    results, barrier = [], threading.Barrier(2)

    def enter():
        barrier.wait()
        try:
            lock = RunLock(tmp_path).__enter__()
            results.append(("won", lock))
        except RunLocked:
            results.append(("refused", None))
    threads = [threading.Thread(target=enter) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(r for r, _ in results) == ["refused", "won"]
    assert not (tmp_path / f"{LOCK_NAME}.takeover").exists()


def test_a_lock_from_another_computer_says_how_to_clear_it(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 7, "started": 1.0, "host": "old-container-1f2e"}))
    with pytest.raises(RunLocked) as e:
        RunLock(tmp_path).__enter__()
    assert "on the computer old-container-1f2e" in str(e.value) and f"delete {tmp_path / LOCK_NAME}" in str(e.value)
