#!/usr/bin/env bash
# One GPU, at most 8 minutes: training throughput (bf16 + torch.compile) and IW-evaluation
# throughput (fp32 + torch.compile: what `vlae eval --compile` runs) of the paper's presets,
# with the projected time of the paper's protocol, written as one JSON.
#
#   bash bench/gpu.sh [OUT.json]            # on a CUDA machine (inside the project's venv)
#   bash bench/gpu.sh --dry-run [OUT.json]  # the same pipeline on the CPU, tiny preset, seconds
set -euo pipefail
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT="${1:-gpu_bench.json}"
[[ "$OUT" = /* ]] || OUT="$PWD/$OUT"
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
if (( DRY )); then
  DEVICE=cpu; PRESETS="tiny"; SECONDS_EACH=0.5; EXTRA=(--threads 1 --loop-steps 5); EVAL=(--k 8 --images 4 --threads 1)
  TRAIN_FLAGS=(); EVAL_FLAGS=()
else
  DEVICE=cuda; PRESETS="${PRESETS:-mnist-paper mnist-gated}"; SECONDS_EACH=20; EXTRA=(--loop-steps 60)
  EVAL=(--k 1024 --images 16); TRAIN_FLAGS=(--bf16 --compile); EVAL_FLAGS=(--compile)
fi
# shellcheck disable=SC2086
"$PY" train.py --device "$DEVICE" --presets $PRESETS --seconds "$SECONDS_EACH" "${EXTRA[@]}" \
  "${TRAIN_FLAGS[@]}" --json "$TMP/train.json"
# shellcheck disable=SC2086
"$PY" eval.py --device "$DEVICE" --presets $PRESETS --seconds "$SECONDS_EACH" "${EVAL[@]}" \
  "${EVAL_FLAGS[@]}" --json "$TMP/eval.json"
"$PY" protocol.py "$TMP/train.json" "$TMP/eval.json" --out "$OUT"
echo "wrote $OUT"
