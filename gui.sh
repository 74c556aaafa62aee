#!/usr/bin/env bash
# Start Easel: ./gui.sh [options for gui.py]. Works from any folder; run install.sh once first.
set -euo pipefail
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
cd "$HERE"
if [ ! -x .venv/bin/python ]; then
    printf '[easel] Easel is not installed yet: run  bash install.sh  first (in %s).\n' "$HERE" >&2
    exit 1
fi
exec .venv/bin/python gui.py "$@"
