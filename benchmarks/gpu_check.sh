#!/usr/bin/env bash
# The built-in target on a CUDA GPU, in one script of under 10 minutes (about 9 on an H100-class machine):
#   1. what is there: torch, the GPU, the Python packages autoresearch needs (installed from .whl/ when carried)
#   2. the CUDA tests (tests/test_gpt_target.py -k cuda: a bf16 step, compiled against eager, sliding windows)
#   3. against the nanoGPT-style model: val_bpb, tokens/s and MFU after a 20 s budget, seed 0, interleaved
#   4. a 3-experiment loop (search agent, one slot, pipelined) at a 60 s budget: each run's wall time beyond its
#      budget (the first compiles from scratch, the later ones load the compile cache) and the slot's utilisation
# Data: `stdlib` (Python's own sources; nothing to download). One compile cache for the whole check, empty at
# its start, as the harness keeps one per machine. Everything is printed and kept in OUT_DIR.
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]            # in the repository root; OUT_DIR defaults to $OUT or ./gpu-check
#     DEVICE=cpu VS_BUDGET=4s LOOP_BUDGET=4s bash benchmarks/gpu_check.sh /tmp/dry   # the script's own dry run, no GPU
#
# No install needed: autoresearch runs from src/. A machine without a registry gets the missing packages as wheels
# made elsewhere with benchmarks/gpu_wheels.sh and carried as .whl/ in the repository root.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
VS_BUDGET=${VS_BUDGET:-20s}
LOOP_BUDGET=${LOOP_BUDGET:-60s}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)/torch-compile
LOG="$OUT_DIR/gpu_check.log"
say() { echo "== $(date +%T) $*" | tee -a "$LOG"; }
started=$(date +%s)
# A step over its time limit gets SIGINT (Ctrl-C: the harness stops its runs and servers), SIGKILL 20 s later;
# its exit status is then 124 (or 137), and the next step starts.

# ---------------------------------------------------------------------------- 1. what is there
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  say "installing the carried wheels (.whl/) into /tmp/site"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tee -a "$LOG"
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
DEVICE=$DEVICE $PY - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, os, platform, shutil, sys
missing = []
for name in ("torch", "numpy", "pydantic", "optuna", "rich", "scipy", "tokenizers", "pytest", "autoresearch"):
    try:
        importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - any failure to import is what we report
        missing.append(f"{name} ({type(error).__name__}: {error})")
print(f"python {platform.python_version()} ({sys.executable})")
print(f"C compiler for Triton: {shutil.which('cc') or shutil.which('gcc') or 'NONE'} | "
      f"unshare (the jail): {shutil.which('unshare') or 'none: runs are not isolated'}")
if "torch" in sys.modules:
    import torch
    gpu = torch.cuda.is_available()
    print(f"torch {torch.__version__} | " + (f"{torch.cuda.get_device_name(0)}, "
          f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB" if gpu else "no CUDA GPU visible"))
    if not gpu and os.environ["DEVICE"].startswith("cuda"):
        missing.append("a CUDA GPU that torch sees (torch.cuda.is_available() is False)")
if missing:
    print("MISSING: " + "; ".join(missing))
    if any(not m.startswith(("a CUDA", "torch")) for m in missing):
        print("For missing packages: on a machine with a registry run `bash benchmarks/gpu_wheels.sh` in the "
              "repository root, and carry .whl/ here with the working tree")
    sys.exit(2)
EOF
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  say "STOPPED: the machine lacks what the check needs (above)"
  exit 2
fi

# ---------------------------------------------------------------------------- 2. the CUDA tests
say "CUDA tests"
timeout -s INT -k 20 80 $PY -m pytest -q -p no:cacheprovider tests/test_gpt_target.py -k cuda -rA 2>&1 | tee "$OUT_DIR/tests.txt" \
  | tail -n 15 | tee -a "$LOG"
say "CUDA tests: exit ${PIPESTATUS[0]}"

# ---------------------------------------------------------------------------- 3. against nanoGPT
say "the built-in target against the nanoGPT-style model ($VS_BUDGET, seed 0)"
timeout -s INT -k 20 160 $PY benchmarks/vs_nanogpt.py --device "$DEVICE" --budget "$VS_BUDGET" --seeds 1 --data stdlib \
  --json "$OUT_DIR/vs_nanogpt.json" 2>&1 | tee -a "$LOG"
say "vs nanoGPT: exit ${PIPESTATUS[0]}"

# ---------------------------------------------------------------------------- 4. the loop
say "a 3-experiment loop at $LOOP_BUDGET (search agent, one slot, pipelined)"
timeout -s INT -k 20 350 $PY benchmarks/utilisation.py --target gpt --device "$DEVICE" --budget "$LOOP_BUDGET" --latency 0 --experiments 3 \
  --modes pipelined 2>&1 | tee "$OUT_DIR/utilisation.txt" | tee -a "$LOG"
say "loop: exit ${PIPESTATUS[0]}"

say "done in $(( $(date +%s) - started )) s; compile cache: $(du -sh "$TORCHINDUCTOR_CACHE_DIR" | cut -f1)"
