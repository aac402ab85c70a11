#!/usr/bin/env bash
# Wheels for the Python packages autoresearch needs that a bare GPU machine's image may lack (it has torch, numpy,
# scipy, rich, tokenizers and pytest, no package registry): pydantic and optuna with their dependencies, for
# CPython 3.12 on x86-64 Linux. Run it where pip reaches a registry, in the repository's root; then carry `.whl`
# to the GPU machine with the working tree, where benchmarks/gpu_check.sh installs them (pip --no-index).
#
#     bash benchmarks/gpu_wheels.sh [PYTHON_VERSION]     # default 3.12; about 10 MB in .whl/
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-3.12}
PACKAGES=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
          typing-extensions==4.16.0 optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9 greenlet==3.5.6
          colorlog==6.12.0 mako==1.4.3)
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$VERSION" --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${PACKAGES[@]}"
ls -l .whl && du -sh .whl
