#!/usr/bin/env bash
# One bounded GPU check of the fast training step (~5-6 min on an H100), run from the repo root on the
# lent machine with the wheels from bench/fetch_gpu_wheels.sh in .whl/:
#   bash bench/gpu_check.sh
# 1. versions and GPU, 2. pytest -m gpu for tests/model (flex document masking, Liger loss == HF loss),
# 3. bench/train_throughput.py --size full (stock HF baseline vs kiwi variants, 32,768 tokens/step).
# Every output goes under $OUT (default ./gpu_out); each piece is bounded with `timeout`.
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/env.txt"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" - <<'PYEOF'
import importlib.metadata as md, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ("transformers", "tokenizers", "liger-kernel", "triton", "huggingface-hub", "safetensors"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
PYEOF
} 2>&1 | tee "$OUT/env.txt"

echo "== pytest -m gpu tests/model" | tee "$OUT/gpu_tests.txt"
timeout 180 "$PY" -m pytest tests/model -m gpu -q -p no:cacheprovider -rs 2>&1 | tee -a "$OUT/gpu_tests.txt"
echo "pytest exit: ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_tests.txt"

echo "== bench/train_throughput.py --size full" | tee "$OUT/bench_log.txt"
timeout 330 "$PY" bench/train_throughput.py --size full --out "$OUT/train_throughput.md" ${BENCH_ARGS:-} \
  2>&1 | tee -a "$OUT/bench_log.txt"
echo "bench exit: ${PIPESTATUS[0]}" | tee -a "$OUT/bench_log.txt"
