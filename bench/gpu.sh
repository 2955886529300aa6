#!/usr/bin/env bash
# One GPU, about 10 minutes: the CUDA tests, then training throughput (eager, CUDA graph and
# torch.compile; bf16 and fp32) of the paper's presets at the paper's batch sizes, IW-evaluation
# throughput, bf16 against fp32 training on the same run, and the projected times of the paper's
# protocols, into one JSON; last, the codec with its network on the GPU (its CUDA round-trip tests,
# and bench/compress.py on a binary model trained here for a minute, at the default chunk size, its
# file read on the CPU too, and at 2,000 images a chunk: $LOGS/codec.json, $LOGS/codec-batch.json). Every step
# has its own time limit and log, so a failure loses nothing else.
#
#   bash bench/gpu.sh [OUT.json]            # on a CUDA machine (VLAE_DATA_DIR: real data for the precision run)
#   bash bench/gpu.sh --codec [OUT.json]    # the codec's steps alone (about 5 minutes; logs and JSON in OUT.logs/)
#   bash bench/gpu.sh --dry-run [OUT.json]  # the same steps and flags on the CPU, tiny sizes (graphs: eager)
#
# It needs vlae importable (installed, or PYTHONPATH=src) and its packages; a machine that cannot
# fetch them gets them as wheels. A missing one stops the script before any step, naming it.
set -uo pipefail
DRY=0 CODEC_ONLY=0
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --codec) CODEC_ONLY=1 ;;
    *) echo "error: unknown option $1 (--dry-run, --codec)" >&2; exit 2 ;;
  esac
  shift
done
OUT="${1:-gpu_bench.json}"
[[ "$OUT" = /* ]] || OUT="$PWD/$OUT"
LOGS="${OUT%.json}.logs"
mkdir -p "$LOGS"
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
DATA=()
CODEC_DATA=mnist-embedded  # the 5,000 real digits a package ships, where no data folder is named
[[ -n "${VLAE_DATA_DIR:-}" ]] && DATA=(--data-dir "$VLAE_DATA_DIR") && CODEC_DATA=binarized-mnist
if (( DRY )); then
  DEVICE=cpu; SPECS=(tiny:16); MODES=(eager); GRAPH=eager; CGRAPH=compile; S=0.3; LOOP=12; TESTS_LIMIT=120
  MNIST=tiny; DENSE=tiny; EVAL=(--k 8 --images 2 --seconds 0.3 --threads 1)
  PSTEPS=(--steps 6 --batch-size 8 --valid-images 8 --log-every 2)
  SPECS_COMPILE=(tiny:16); STAND_IN=(--stand-in tiny); CODEC_PRESET=tiny; CODEC_SECONDS=3; CODEC_BATCH=250
else
  DEVICE=cuda; SPECS=(mnist-paper:128 cifar-paper:32 cifar-paper:128 cifar-paper-dense:128); MODES=(eager graph)
  GRAPH=graph; STAND_IN=()
  CGRAPH=compile+graph; S=2; LOOP=40; TESTS_LIMIT=150; MNIST=mnist-paper; DENSE=cifar-paper-dense
  EVAL=(--k 1024 --images 16 --seconds 4); PSTEPS=(--steps 600 --batch-size 128); SPECS_COMPILE=(mnist-paper:128 cifar-paper:32)
  CODEC_PRESET=mnist-small; CODEC_SECONDS=60; CODEC_BATCH=2000
fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $LOGS/NAME.log, record the exit status
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s)"
  local start=$SECONDS
  timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"status\": $rc, \"seconds\": $((SECONDS - start))}" >>"$LOGS/steps.jsonl"
  tail -n 12 "$LOGS/$name.log"
  (( rc == 0 )) || { echo "!! $name exited with status $rc (124: time limit)"; FAILED+=("$name"); }
}
FAILED=()

# Every step fails without these: say which are missing once, rather than in every step's log.
"$PY" - <<'CHECK' || exit 2
import importlib.util, sys
needed = ("vlae", "torch", "numpy", "scipy", "constriction", "safetensors", "mlxtend", "skimage", "PIL", "tqdm",
          "matplotlib", "pytest")
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"error: missing Python packages: {', '.join(missing)} (pip install -e '.[dev]', or wheels)")
CHECK
: >"$LOGS/steps.jsonl"
if (( ! CODEC_ONLY )); then
step tests "$TESTS_LIMIT" "$PY" -m pytest ../tests/test_cuda_train.py -q -p no:cacheprovider
step train_bf16 200 "$PY" train.py --device "$DEVICE" --bf16 --presets "${SPECS[@]}" --modes "${MODES[@]}" \
  --seconds "$S" --loop-steps "$LOOP" --json "$LOGS/train_bf16.json"
step train_fp32 80 "$PY" train.py --device "$DEVICE" --presets "${SPECS[@]}" --modes "$GRAPH" --seconds "$S" \
  --no-loop --json "$LOGS/train_fp32.json"
step eval_mnist 80 "$PY" eval.py --device "$DEVICE" --presets "$MNIST" --compile "${EVAL[@]}" --protocol-k 4096 \
  --json "$LOGS/eval_mnist.json"
step eval_cifar 60 "$PY" eval.py --device "$DEVICE" --presets "$DENSE" "${EVAL[@]}" --protocol-k 512 \
  --json "$LOGS/eval_cifar.json"
step precision 120 "$PY" precision.py --device "$DEVICE" --preset "$MNIST" "${PSTEPS[@]}" "${DATA[@]}" \
  --json "$LOGS/precision.json"
step protocol 30 "$PY" protocol.py "$LOGS"/train_*.json "$LOGS"/eval_*.json "$LOGS"/precision.json "${STAND_IN[@]}" --out "$OUT"
step train_compile 150 "$PY" train.py --device "$DEVICE" --bf16 --presets "${SPECS_COMPILE[@]}" --modes "$CGRAPH" \
  --seconds "$S" --no-loop --json "$LOGS/train_compile.json"
step protocol 30 "$PY" protocol.py "$LOGS"/train_*.json "$LOGS"/eval_*.json "$LOGS"/precision.json "${STAND_IN[@]}" --out "$OUT"
fi
rm -rf "$LOGS/codec_run"  # a run folder is never reused
step codec_tests 120 "$PY" -m pytest ../tests/test_codec_portable.py ../tests/test_codec.py -q -p no:cacheprovider -k cuda
step codec_train $((CODEC_SECONDS + 90)) "$PY" -m vlae train --preset "$CODEC_PRESET" --dataset "$CODEC_DATA" \
  "${DATA[@]}" --run-dir "$LOGS/codec_run" --time-budget "$CODEC_SECONDS" --device "$DEVICE" --quiet --no-figures
step codec 240 "$PY" compress.py --run "$LOGS/codec_run" --dataset "$CODEC_DATA" "${DATA[@]}" --split test \
  --subset 0 --k 0 --device "$DEVICE" --threads 2 --also-decode-on cpu --out "$LOGS/codec.json"
# A GPU step costs its kernel launches whatever the chunk: larger chunks, fewer steps per image.
step codec_batch 180 "$PY" compress.py --run "$LOGS/codec_run" --dataset "$CODEC_DATA" "${DATA[@]}" --split test \
  --subset 0 --k 0 --device "$DEVICE" --threads 2 --batch "$CODEC_BATCH" --out "$LOGS/codec-batch.json"
if (( CODEC_ONLY )); then echo "wrote $LOGS/codec.json"; else echo "wrote $OUT (logs in $LOGS)"; fi
(( ${#FAILED[@]} == 0 )) || { echo "failed steps: ${FAILED[*]}"; exit 1; }
