"""Which Pythons can install Easel without building anything: Python version × platform × pinned package.

    python tools/wheel_matrix.py                      # 3.10-3.14 on Windows and Linux x86-64
    python tools/wheel_matrix.py --python 3.14 --platform win_amd64
    python tools/wheel_matrix.py --torch-index https://download.pytorch.org/whl/cu130   # the CUDA wheels too

Run it whenever a pin in requirements*.txt or TORCH_VERSION changes, on a machine that reaches the package index
(not in CI: it needs the network). For each combination pip resolves the whole install — every pin, torch and
every dependency — for that Python and platform, as wheels only, without downloading the wheels themselves
(`pip install --dry-run`). A cell is "ok" when all of it has a wheel; otherwise each pin is tried alone and the
ones without a wheel are named. The install scripts accept exactly the Python versions whose column is all "ok".

pip evaluates dependency markers (`; platform_system == "Linux"`) for the machine it runs on, not the target. So
torch is checked on its own (--no-deps: its CUDA runtime wheels are per-OS and come with it), and while the rest
is resolved a stand-in torch wheel without dependencies answers everything that needs torch. A dependency that
only one OS needs is checked only when the script runs on that OS.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
# pip matches manylinux tags exactly, so a Linux column lists the tags a current distribution accepts.
PLATFORMS = {
    "win_amd64": ["win_amd64"],
    "linux_x86_64": ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                     "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"],
}


def torch_version() -> str:
    text = (ROOT / "install.sh").read_text(encoding="utf-8")
    return re.search(r"^TORCH_VERSION=([\d.]+)$", text, re.M).group(1)


def accepted_pythons() -> list[str]:
    """The versions install.sh accepts (its PY_CHECK range): the exit code is 1 when one of them lacks a wheel."""
    text = (ROOT / "install.sh").read_text(encoding="utf-8")
    lo, hi = re.search(r"\(3, (\d+)\) <= sys.version_info\[:2\] <= \(3, (\d+)\)", text).groups()
    return [f"3.{minor}" for minor in range(int(lo), int(hi) + 1)]


def pins(*files: str) -> list[str]:
    out = []
    for name in files:
        for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
            line = line.split("#")[0].strip()
            if line:
                out.append(line)
    return out


UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Failed to establish", "Name or service not known",
               "Temporary failure in name resolution", "Network is unreachable", "timed out")


def stand_in_torch(folder: Path, version: str) -> None:
    """torch-VERSION+standin-py3-none-any.whl, with no dependencies: `torch==VERSION` picks it (a local version
    sorts above the plain one), so resolving the other pins never drags in torch's per-OS CUDA wheels."""
    name = f"torch-{version}+standin.dist-info"
    files = {f"{name}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}+standin\n",
             f"{name}/WHEEL": "Wheel-Version: 1.0\nGenerator: easel\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()}"
              f",{len(text.encode())}" for path, text in files.items()]
    with zipfile.ZipFile(folder / f"torch-{version}+standin-py3-none-any.whl", "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)
        whl.writestr(f"{name}/RECORD", "\n".join([*record, f"{name}/RECORD,,"]) + "\n")


def resolve(requirements: list[str], python: str, platform: str, no_deps: bool = False,
            index_url: str | None = None, find_links: Path | None = None) -> tuple[bool, str]:
    """(True, '') if pip finds wheels for all of it, else (False, pip's error, or 'unreachable')."""
    with tempfile.TemporaryDirectory() as target:
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
               "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--target", target,
               "--report", str(Path(target) / "report.json")]
        for tag in PLATFORMS[platform]:
            cmd += ["--platform", tag]
        if no_deps:
            cmd.append("--no-deps")
        env = dict(os.environ)
        if index_url:  # that index alone, without this machine's pip config (its mirrors and constraints); once, briefly
            cmd += ["--index-url", index_url, "--retries", "0", "--timeout", "15"]
            env["PIP_CONFIG_FILE"] = os.devnull
        if find_links:
            cmd += ["--find-links", str(find_links)]
        proc = subprocess.run(cmd + requirements, capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode == 0:
        return True, ""
    text = proc.stderr + proc.stdout
    if any(sign in text for sign in UNREACHABLE):
        return False, "unreachable"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    error = next((ln for ln in lines if ln.startswith("ERROR")), lines[-1] if lines else f"exit {proc.returncode}")
    return False, error


def column(python: str, platform: str, requirements: list[str]) -> dict:
    """Torch (the first requirement) alone, without its per-OS dependencies; the rest with every dependency."""
    torch_ok, _ = resolve(requirements[:1], python, platform, no_deps=True)
    with tempfile.TemporaryDirectory() as links:
        stand_in_torch(Path(links), requirements[0].split("==")[1])
        rest_ok, error = resolve(requirements, python, platform, find_links=Path(links))
    if torch_ok and rest_ok:
        return {"ok": True, "missing": []}
    missing = [] if torch_ok else requirements[:1]
    if not rest_ok:
        missing += [req for req in requirements[1:] if not resolve([req], python, platform, no_deps=True)[0]]
    return {"ok": False, "missing": missing or [f"a dependency ({error})"]}


def reachable(url: str) -> bool:
    """Does the index answer at all? (pip says only "no matching distribution" when it cannot reach it.)"""
    import urllib.error
    import urllib.request
    try:
        urllib.request.urlopen(url, timeout=15).close()
        return True
    except urllib.error.HTTPError:
        return True  # it answered, if with an error page
    except (OSError, ValueError):
        return False


def torch_cuda_cell(python: str, index_url: str, version: str) -> str:
    if not reachable(index_url):
        return "not reachable from here"
    tag = index_url.rstrip("/").rsplit("/", 1)[-1]
    ok, error = resolve([f"torch=={version}+{tag}"], python, "win_amd64", no_deps=True, index_url=index_url)
    if ok:
        return "ok"
    return "not reachable from here" if error == "unreachable" else "no wheel"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", help=f"versions to check (default: {', '.join(PYTHONS)})")
    parser.add_argument("--platform", action="append", choices=list(PLATFORMS))
    parser.add_argument("--torch-index", action="append", default=[],
                        help="also check torch==VERSION+TAG on this PyTorch wheel index (Windows), e.g. "
                             "https://download.pytorch.org/whl/cu130")
    parser.add_argument("--json", action="store_true", help="print the matrix as JSON")
    args = parser.parse_args(argv)
    pythons, platforms = args.python or list(PYTHONS), args.platform or list(PLATFORMS)
    version = torch_version()
    requirements = [f"torch=={version}", *pins("requirements.txt", "requirements-dev.txt")]
    matrix = {f"{py} {plat}": column(py, plat, requirements) for plat in platforms for py in pythons}
    cuda = {f"{py} {idx}": torch_cuda_cell(py, idx, version) for idx in args.torch_index for py in pythons}
    accepted = accepted_pythons()
    failed = [key for key, cell in matrix.items() if not cell["ok"] and key.split()[0] in accepted]
    if args.json:
        print(json.dumps({"torch": version, "matrix": matrix, "torch_cuda": cuda, "accepted": accepted}, indent=1))
        return 1 if failed else 0
    width = max(len(r) for r in requirements)
    print(f"Wheels for every pin and dependency (torch {version} from the default index; 'ok' = nothing to build)")
    print(f"{'':<{width}}  " + "  ".join(f"{key:>18}" for key in matrix))
    for req in requirements:
        cells = ["--" if req in cell["missing"] else "ok" for cell in matrix.values()]
        print(f"{req:<{width}}  " + "  ".join(f"{c:>18}" for c in cells))
    print(f"{'(whole install)':<{width}}  " + "  ".join(f"{'ok' if c['ok'] else 'NO':>18}" for c in matrix.values()))
    for key, cell in matrix.items():
        if not cell["ok"]:
            print(f"{key}: no wheel for {', '.join(cell['missing'])}")
    for key, cell in cuda.items():
        print(f"torch {version} CUDA wheel, Windows, Python {key}: {cell}")
    print(f"install.sh / install.bat accept Python {accepted[0]}-{accepted[-1]}: "
          + (f"NOT all installable ({', '.join(failed)})" if failed else "every one installs from wheels"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
