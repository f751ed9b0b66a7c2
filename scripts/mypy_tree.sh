#!/usr/bin/env bash
# mypy cannot follow setuptools' editable package-dir mapping, so it gets a tree of
# symlinks laid out as the installed package (natlens/{agent,collector,proto,lab}).
set -euo pipefail
cd "$(dirname "$0")/.."
t=build/mypy-tree/natlens
rm -rf build/mypy-tree && mkdir -p "$t"
for f in natlens/*.py; do ln -s "$PWD/$f" "$t/"; done
for d in agent collector proto lab; do ln -s "$PWD/$d" "$t/$d"; done
cd build/mypy-tree && exec ../../.venv/bin/mypy --config-file ../../pyproject.toml natlens
