#!/usr/bin/env bash
# Install recsparse and its real stack into a virtual environment.
#   scripts/install.sh            CPU (default): torch 2.13.0 CPU, fbgemm-gpu-cpu 1.8.0, faiss-cpu
#   scripts/install.sh --gpu      CUDA: fbgemm-gpu 1.8.0 and faiss-gpu instead of the CPU builds
# Environment: VENV (default .venv), PYTHON (default python3.11 or python3).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU=0
for a in "$@"; do
  case "$a" in
    --gpu) GPU=1 ;;
    -h|--help) sed -n 2,5p "$0"; exit 0 ;;
    *) echo "install.sh: unknown option '$a' (try --help)" >&2; exit 2 ;;
  esac
done
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
$PIP install --upgrade pip
# torch first and pinned: an unpinned torch (or one pulled in by a dependency) is a multi-GB CUDA build.
if [ "$GPU" = 1 ]; then
  $PIP install torch==2.13.0 fbgemm-gpu==1.8.0
else
  $PIP install -r requirements/cpu.txt
fi
# torchrec's metadata requires the CUDA fbgemm-gpu package; install it without deps and add its real needs.
$PIP install --no-deps torchrec==1.8.0
$PIP install -r requirements/base.txt
if [ "$GPU" = 1 ]; then
  $PIP uninstall -y faiss-cpu
  $PIP install faiss-gpu-cu12
fi
$PIP install --no-deps -e .
"$VENV/bin/python" -c "import torchrec, fbgemm_gpu, faiss, lightning, polars, recsparse; print('recsparse stack OK')"
echo "installed into $VENV in $(( $(date +%s) - start )) s"
