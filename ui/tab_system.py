"""System tab: is this PC ready to train? The system doctor's findings (GPU, VRAM, driver, CUDA build, RAM, disk),
each with what to do, under a one-line verdict.

The doctor (engine/system_doctor.py) imports torch and runs one bitsandbytes step on the GPU, and the GUI process
never imports torch, so it runs as `python -m engine doctor --json` in a subprocess. A result is reused for
CACHE_S seconds: the page load's first-start check and a click right after it run the doctor once, not twice.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr

from ui import runner

TIMEOUT_S = 120   # torch's first import on Windows (antivirus scanning its DLLs) can take a minute
CACHE_S = 60
SEVERITY_WORDS = {"error": "Error", "warning": "Warning", "info": "Note", "ok": "OK"}  # words: no emoji font needed
GROUPS = {"error": "To fix before training", "warning": "Warnings", "info": "Notes", "ok": "OK"}
WAITING_FOR_RUN = ("A run is training, so this PC is not checked now (the check tests the GPU, which would take "
                   "memory from the run). Press **Check again** to check anyway.")
CHECKING = "Checking this PC (PyTorch, the GPU and its driver, RAM, disk); this takes a few seconds…"

_cache: dict[str, tuple[float, dict]] = {}   # resolved runs folder -> (time.monotonic() of the check, result)
_cache_lock = threading.Lock()               # held while the doctor runs: a second caller waits, then reuses it


# --- running the doctor --------------------------------------------------------------------------------------------
def doctor_command(runs_root: Path) -> list[str]:
    """The engine's doctor for this runs folder (its drive's free space is checked too); never a shell."""
    return [sys.executable, "-m", "engine", "doctor", "--json", "--runs-dir", str(runs_root)]


def check(project_root: Path, runs_root: Path, max_age_s: float = CACHE_S) -> dict:
    """The doctor's JSON ({'counts', 'findings': [{'check', 'severity', 'message', 'hint'}], 'facts'}) plus
    'checked_at' (time.time()); a result younger than max_age_s is reused. RuntimeError in the user's words when
    the doctor cannot run, times out or prints no result (failures are not cached: the next call tries again)."""
    key = str(Path(runs_root).resolve())
    with _cache_lock:
        cached = _cache.get(key)
        if cached and time.monotonic() - cached[0] < max_age_s:
            return copy.deepcopy(cached[1])
        result = _run_doctor(Path(project_root), Path(runs_root))
        _cache[key] = (time.monotonic(), result)
        return copy.deepcopy(result)


def _run_doctor(project_root: Path, runs_root: Path) -> dict:
    manual = "To see where it stops, run `python -m engine doctor` in a terminal (activate_venv.bat first)."
    try:
        proc = subprocess.run(doctor_command(runs_root), cwd=str(project_root), capture_output=True, text=True,
                              encoding="utf-8", errors="replace", timeout=TIMEOUT_S, stdin=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONIOENCODING": "utf-8"})  # Windows pipes default to cp1252
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"The system check did not finish within {TIMEOUT_S} seconds: PyTorch or the NVIDIA "
                           f"driver did not answer (a driver update that waits for a restart does this). Restart "
                           f"the PC and check again. {manual}") from None
    except OSError as exc:
        raise RuntimeError(f"The system check could not start Python ({sys.executable}): {exc.strerror or exc}. "
                           f"Run install.bat again (Linux: bash install.sh).") from None
    try:   # exit code 1 means "there are errors", and the JSON says which
        result = json.loads(proc.stdout)
        if not isinstance(result, dict) or not isinstance(result.get("findings"), list):
            raise ValueError("no findings")
    except ValueError:
        detail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:]) or "it printed nothing"
        raise RuntimeError(f"The system check stopped without a result (exit code {proc.returncode}). {manual} "
                           f"Its last words: {detail}") from None
    return {**result, "checked_at": time.time()}


def needs_attention(result: dict | None) -> bool:
    """True when a finding is an error or a warning (or the check itself failed: None), so that the app can open
    the System tab on the first visit."""
    if result is None:
        return True
    return any(f.get("severity") in ("error", "warning") for f in result.get("findings", []))


# --- the report ----------------------------------------------------------------------------------------------------
def report_markdown(result: dict) -> str:
    """The verdict, the PC's key facts, then every finding (errors first) with what to do."""
    facts, findings = result.get("facts") or {}, result.get("findings") or []
    lines = [f"### {_md(verdict(result))}"]
    if fact_lines(facts):
        lines += ["", "#### This PC", ""] + [f"- **{label}:** {_md(value)}" for label, value in fact_lines(facts)]
    for severity, heading in GROUPS.items():   # a heading per group: separate lists, errors first
        group = [f for f in findings if f.get("severity") == severity]
        if group:
            lines += ["", f"#### {heading}", ""]
        for f in group:
            line = f"- **{SEVERITY_WORDS[severity]}:** {_md(f.get('message', ''))}"
            # two trailing spaces: a Markdown line break, so the hint starts its own line in the same item
            lines += [line + "  ", f"  What to do: {_md(f['hint'])}"] if f.get("hint") else [line]
    if result.get("checked_at"):
        lines += ["", f"Checked at {time.strftime('%H:%M:%S', time.localtime(result['checked_at']))}. The same "
                      "check in a terminal: `python -m engine doctor`."]
    return "\n".join(lines)


def verdict(result: dict) -> str:
    """One line: ready (on which GPU), how many problems to fix, or no CUDA GPU."""
    facts, findings = result.get("facts") or {}, result.get("findings") or []
    gpus = facts.get("gpus") or []
    no_gpu = not facts.get("cuda_available") or not gpus
    errors = sum(f.get("severity") == "error" for f in findings)
    # without a GPU the verdict says so already: the doctor's "no CUDA GPU" warning is not counted again
    warnings = sum(f.get("severity") == "warning" and not (no_gpu and f.get("check") == "gpu") for f in findings)
    also = f", and {_count(warnings, 'warning')} to read" if warnings else ""
    if errors:
        return f"{_count(errors, 'problem')} to fix before training{also}."
    if no_gpu:
        return f"No CUDA GPU: only the demos will be quick{also}."
    return f"Ready to train on {', '.join(_gpu_text(g) for g in gpus)}{also}."


def fact_lines(facts: dict) -> list[tuple[str, str]]:
    """(label, value) for the facts the doctor reported: GPU, VRAM, driver, CUDA build, RAM, free disk."""
    found = []
    if "gpus" in facts:
        found.append(("GPU", "; ".join(_gpu_text(g) for g in facts["gpus"]) or "no NVIDIA GPU found"))
    if "driver" in facts:
        found.append(("NVIDIA driver", facts["driver"] or "not found (nvidia-smi did not answer)"))
    if facts.get("torch"):
        build = f"CUDA {facts['torch_cuda']} build" if facts.get("torch_cuda") else "CPU-only build"
        found.append(("PyTorch", f"{facts['torch']}, {build}"))
    elif "torch" in facts:
        found.append(("PyTorch", "does not load (see below)"))
    if facts.get("ram_total_gb") is not None:
        found.append(("RAM", f"{facts['ram_total_gb']} GB, {facts.get('ram_free_gb', '?')} GB free"))
    disks = [d for d in facts.get("disks") or [] if d.get("free_gb") is not None]
    if disks:
        found.append(("Free disk", "; ".join(f"{d['free_gb']} GB on the drive of {d.get('label', d.get('path'))}"
                                             for d in disks)))
    return found


def _gpu_text(gpu: dict) -> str:
    vram = gpu.get("vram_gb")
    return f"{gpu.get('name') or 'a GPU'} ({'?' if vram is None else vram} GB VRAM)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _md(text) -> str:
    """Text shown as itself in Markdown: Windows paths keep their backslashes (C:\\Easel\\.venv), '<' and '_' stay
    literal; `code spans` the doctor wrote are kept as code (backslashes are literal inside them already)."""
    text = str(text)
    parts = text.split("`")
    if len(parts) % 2 == 0:      # an unpaired backtick: no code spans at all
        parts = [text.replace("`", "\\`")]
    for i in range(0, len(parts), 2):
        for ch in "\\*_<>[]$":
            parts[i] = parts[i].replace(ch, "\\" + ch)
    return "`".join(parts)


def error_markdown(exc: Exception) -> str:
    return f"### The system check could not run\n\n{_md(exc)}"


def report_for(ctx, max_age_s: float = CACHE_S) -> tuple[str, dict | None]:
    """(the report, the result) for the app's folders; on failure (the message in words, None)."""
    try:
        result = check(ctx.project_root, ctx.runs_root, max_age_s)
    except RuntimeError as exc:
        return error_markdown(exc), None
    return report_markdown(result), result


def first_start(ctx, seen: bool | None) -> tuple[str, str, bool]:
    """For the page load: (the report, the banner for the top of the page, the browser's flag now). The banner
    shows on the first visit that is checked when something needs attention, and on every visit while there is an
    error; it points at the System tab. (It does not switch tabs: the check takes seconds, and a tab that changes
    by itself would pull a person off the one they just opened.) While a run trains the doctor waits for a click:
    its CUDA and bitsandbytes test would take GPU memory from the run."""
    if runner.active_run(ctx.runs_root) is not None:
        return WAITING_FOR_RUN, "", bool(seen)
    report, result = report_for(ctx)
    errors = result is None or any(f.get("severity") == "error" for f in result.get("findings") or [])
    show = errors or (not seen and needs_attention(result))
    banner = (f"**This PC:** {verdict(result) if result else 'the system check could not run.'} The **System** tab "
              "says what to do." if show else "")
    return report, banner, True


# --- widgets -------------------------------------------------------------------------------------------------------
def build() -> dict:
    gr.Markdown("Is this PC ready to train? This checks Python, PyTorch and its CUDA build, the GPU, its VRAM and "
                "driver, the 8-bit optimizers, RAM and free disk space, and says what to do about each problem.")
    check_button = gr.Button("Check again", elem_id="system-check", scale=0, min_width=140)
    report = gr.Markdown(CHECKING, elem_id="system-report")
    # set after the first visit's check: a warning's banner shows once, not on every reload
    seen = gr.BrowserState(False, storage_key="easel-system-seen", secret="easel-local")
    return {"check": check_button, "report": report, "seen": seen}


def wire(ctx, parts: dict) -> None:
    # a click checks now (a driver installed a minute ago must show); the page load may reuse a fresh result
    parts["check"].click(lambda: report_for(ctx, max_age_s=0)[0], outputs=parts["report"], api_name="system_check")


def wire_first_start(ctx, app: gr.Blocks, parts: dict, banner: gr.Markdown) -> None:
    """On page load: fill the report and the banner (first_start). Its own load event (not the preset load
    chain): the doctor takes seconds, the form must not wait."""
    app.load(lambda seen: first_start(ctx, seen), inputs=parts["seen"],
             outputs=[parts["report"], banner, parts["seen"]], api_name="system_first_start")
