#!/usr/bin/env bash
# The CUDA backend on a real NVIDIA GPU, in one command that fits a short device loan (under
# 8 minutes). For a machine where numba-cuda, torch and charrnn's other dependencies are
# installed and nothing can be downloaded; run from the project root:
#
#     bash benchmarks/gpu_check.sh            # logs and JSON under $OUT (default: a temp dir)
#
# 1. the CUDA checks of tests/cuda/check_simulated.py on the device, not the simulator (the
#    persistent time loops then span several blocks and meet at a grid barrier);
# 2. a 2-minute `--device cuda` training on tinyshakespeare (../shared/corpora, or $CORPUS),
#    then a sample of it on the CPU and its `info`;
# 3. `charrnn bench --device cuda` at LSTM 2 x 512 and 3 x 1024 beside PyTorch on the GPU.
# Each step has its own time limit; the last line says which steps failed. Record what it
# measured in BENCHMARKS.md with the date.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
CORPUS="${CORPUS:-../shared/corpora/tinyshakespeare.txt}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CHARRNN_STATE_DIR="$OUT/state" NO_COLOR=1
failed=()

# step NAME SECONDS COMMAND...: COMMAND's stdout and stderr in $OUT/NAME.log
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit}s)"
    local start=$SECONDS
    if timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; then
        echo "   ok in $((SECONDS - start))s"
    else
        echo "   FAILED (exit $?) in $((SECONDS - start))s; the end of $OUT/$name.log:"
        tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
        failed+=("$name")
    fi
}

step gpu 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
step device-tests 150 env CHARRNN_CUDA_DEVICE=1 NUMBA_ENABLE_CUDASIM=0 \
    "$PY" -m pytest -q -p no:cacheprovider tests/cuda/check_simulated.py
step train 160 "$PY" -m charrnn train "$CORPUS" --device cuda --minutes 2 --out "$OUT/run"
step sample 30 sh -c "\"$PY\" -m charrnn sample \"$OUT/run\" --device cpu --length 400 \
    --temperature 0.8 --seed 1 > \"$OUT/sample.txt\""
step info 20 sh -c "\"$PY\" -m charrnn info \"$OUT/run\" --json > \"$OUT/info.json\""
step bench-2x512 45 sh -c "\"$PY\" -m charrnn bench --device cuda --cell lstm --layers 2 \
    --hidden 512 --json > \"$OUT/bench-2x512.json\""
step bench-3x1024 55 sh -c "\"$PY\" -m charrnn bench --device cuda --cell lstm --layers 3 \
    --hidden 1024 --json > \"$OUT/bench-3x1024.json\""

echo "results in $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
if [ ${#failed[@]} -eq 0 ]; then
    echo "gpu_check: every step passed"
else
    echo "gpu_check: failed: ${failed[*]}"
    exit 1
fi
