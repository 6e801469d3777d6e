#!/usr/bin/env bash
# Every check that needs a GPU, in one bounded run on a lent, offline H100 (see README "GPU results").
# Wheels the bare machine lacks are carried in .whl/ (bench/fetch_gpu_wheels.sh --train, plus deepspeed).
#   bash bench/device_run.sh        # writes env, test, bench and training logs under $OUT
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false KIWI_CACHE=/tmp/kiwi-cache
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/env.txt"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
RUNS=/tmp/kiwi-runs
mkdir -p "$RUNS"

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "
import importlib.metadata as md, platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '|', torch.cuda.get_device_name())
for n in ('transformers', 'tokenizers', 'liger-kernel', 'triton', 'lightning', 'hydra-core', 'deepspeed'):
    try: print(n, md.version(n))
    except md.PackageNotFoundError: print(n, 'MISSING')
"
} > "$OUT/env.txt" 2>&1

step() {  # name, timeout, command...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" >> "$OUT/$name.txt"
  local t0=$SECONDS
  timeout "$limit" "$@" >> "$OUT/$name.txt" 2>&1
  echo "== exit $? after $((SECONDS - t0)) s" >> "$OUT/$name.txt"
}

step train_throughput 170 "$PY" bench/train_throughput.py --size full --out "$OUT/train_throughput.md" \
  --variants ${BENCH_VARIANTS:-hf_baseline,kiwi_ckpt_full,kiwi_ckpt_mlp,kiwi_ckpt_every3}
step gpu_tests 80 "$PY" -m pytest tests/model tests/upscale/test_gpu.py -m gpu -q -p no:cacheprovider -rs
step train_gpu 80 "$PY" train.py experiment=quickstart trainer=gpu logger=csv trainer.max_steps=20 \
  "hydra.run.dir=$RUNS/gpu"
step train_deepspeed 70 "$PY" train.py experiment=quickstart trainer=deepspeed_a100 logger=csv \
  trainer.max_steps=10 export_hf=false "hydra.run.dir=$RUNS/deepspeed"
tar czf "$OUT/runs.tgz" --exclude='*.ckpt' --exclude='*.safetensors' --exclude='*.pt' -C "$RUNS" . 2>/dev/null
ls -la "$OUT"
