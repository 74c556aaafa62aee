"""Screenshots of every tab with the demo loaded: python -m tests.e2e.screenshots [OUT_DIR] (default docs/screenshots).

Starts the GUI on temporary folders, presses Demo, waits for a sample image, then captures each tab.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.e2e.browser import ROOT, TABS, chromium_page, open_tab, running_gui, textarea_js



def shrink(path: Path) -> None:
    """A 256-colour palette PNG: a third of the size, still sharp for UI text (docs/ stays small)."""
    from PIL import Image
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def shoot(out_dir: Path, wait_for_samples_s: float = 240) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    with tempfile.TemporaryDirectory(prefix="easel shots ") as tmp, running_gui(Path(tmp)) as (url, _log):
        with chromium_page() as page:
            page.goto(url)
            page.get_by_role("button", name="Demo", exact=True).click()
            page.wait_for_function(textarea_js("run-log", " step "), timeout=wait_for_samples_s * 1000)
            page.locator("#run-sample-now").click()
            page.wait_for_selector("#run-samples img", timeout=wait_for_samples_s * 1000)
            page.wait_for_timeout(4000)
            for tab in TABS:
                open_tab(page, tab)
                if tab == "Dataset":
                    page.locator("#dataset-check").click()
                    page.wait_for_selector("#dataset-gallery img", timeout=60_000)
                page.wait_for_timeout(800)
                path = out_dir / f"{tab.lower().replace(' & ', '-').replace(' ', '-')}.png"
                page.screenshot(path=str(path), full_page=True)
                shrink(path)
                shots.append(path)
            open_tab(page, "Run")
            page.locator("#run-stop").click()
            page.wait_for_function("() => document.querySelector('#run-progress').innerText.includes('Stopped')",
                                   timeout=180_000)
    return shots


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"
    for shot in shoot(target):
        print(shot)
