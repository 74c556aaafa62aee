"""The sample grid on the Run tab: for one prompt, a row per sampled step and a column per LoRA strength, so
choosing a checkpoint and a strength is one look; any image opens full size; two steps can be set side by side.

Plain functions over the run's sample events (RunView.samples); the images are served from the run folder, which
the app allows (AppContext.allow)."""
from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote


def file_url(path) -> str:
    """Gradio serves files under the allowed folders at /gradio_api/file=<absolute path>."""
    return "/gradio_api/file=" + quote(str(Path(path).resolve()).replace("\\", "/"), safe="/:")


def prompts_of(samples: list[dict]) -> list[str]:
    return list(dict.fromkeys(str(e.get("prompt", "")) for e in samples))


def steps_of(samples: list[dict], prompt: str | None = None) -> list[int]:
    return sorted({int(e.get("step") or 0) for e in samples if prompt is None or e.get("prompt") == prompt})


def table(samples: list[dict], prompt: str) -> dict[int, dict[tuple, str]]:
    """{step: {(preview model, strength): image path}} for `prompt`; files that are gone are left out. The preview
    model is "" for the model being trained, else the distilled sibling the sample was also rendered on
    (model.preview_path: "Z-Image Turbo"), so those images get columns of their own."""
    cells: dict[int, dict[tuple, str]] = {}
    for e in samples:
        if e.get("prompt") == prompt and Path(str(e.get("path", ""))).is_file():
            column = (str(e.get("preview") or ""), float(e.get("strength") or 1.0))
            cells.setdefault(int(e.get("step") or 0), {})[column] = str(e["path"])
    return cells


def column_label(column: tuple) -> str:
    model, strength = column
    return f"{model} · strength {strength:g}" if model else f"strength {strength:g}"


def _cell(path: str | None, caption: str) -> str:
    if path is None:
        return '<td class="easel-grid-empty">—</td>'
    url = html.escape(file_url(path), quote=True)
    return (f'<td><a href="{url}" target="_blank" title="open full size"><img src="{url}" alt="{html.escape(caption)}"'
            f' loading="lazy"></a><div class="easel-grid-caption">{html.escape(caption)}</div></td>')


def grid_html(samples: list[dict], prompt: str | None, marks: dict[int, str] | None = None) -> str:
    """Rows: the sampled steps (the first at the top); columns: the strengths; marks: {step: 'checkpoint' ...}."""
    if not samples:
        return ('<div class="easel-grid-note">No samples yet: they appear at each sampling step (or press Sample '
                'now).</div>')
    prompt = prompt if prompt in prompts_of(samples) else prompts_of(samples)[0]
    cells = table(samples, prompt)
    strengths = sorted({s for row in cells.values() for s in row})
    head = "".join(f"<th>{html.escape(column_label(s))}</th>" for s in strengths)
    rows = []
    for step in sorted(cells):
        mark = (marks or {}).get(step, "")
        label = f"step {step}" + (f'<div class="easel-grid-mark">{html.escape(mark)}</div>' if mark else "")
        rows.append(f'<tr><th class="easel-grid-step">{label}</th>'
                    + "".join(_cell(cells[step].get(s), f"step {step} · {column_label(s)}") for s in strengths)
                    + "</tr>")
    return (f'<div class="easel-grid-prompt">{html.escape(prompt)}</div><div class="easel-grid-scroll">'
            f'<table class="easel-grid"><tr><th></th>{head}</tr>{"".join(rows)}</table></div>')


def compare_html(samples: list[dict], prompt: str | None, step_a, step_b) -> str:
    """Two steps side by side, larger: each strength's image at step A beside the one at step B."""
    if not samples or step_a in (None, "") or step_b in (None, "") or int(step_a) == int(step_b):
        return ""
    prompt = prompt if prompt in prompts_of(samples) else prompts_of(samples)[0]
    cells = table(samples, prompt)
    a, b = int(step_a), int(step_b)
    strengths = sorted(set(cells.get(a, {})) | set(cells.get(b, {})))
    rows = "".join(f"<tr><th>{html.escape(column_label(s))}</th>"
                   f"{_cell(cells.get(a, {}).get(s), f'step {a} · {column_label(s)}')}"
                   f"{_cell(cells.get(b, {}).get(s), f'step {b} · {column_label(s)}')}</tr>" for s in strengths)
    return (f'<table class="easel-grid easel-grid-compare"><tr><th></th><th>step {a}</th><th>step {b}</th></tr>'
            f"{rows}</table>")


def step_marks(saved: list[dict], best_paths: set[str]) -> dict[int, str]:
    """{step: 'checkpoint saved' | 'best by validation'}: the steps the user can pick a file at."""
    marks: dict[int, str] = {}
    for e in saved:
        step = e.get("step")
        if step is None:
            continue
        label = "best by validation" if str(e.get("path")) in best_paths else "checkpoint saved"
        if marks.get(int(step)) != "best by validation":
            marks[int(step)] = label
    return marks
