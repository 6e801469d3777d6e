#!/usr/bin/env bash
# Every check that needs a GPU, in one bounded run (~9 min) on a lent, offline H100/H200 (docs/long_context.md).
# Wheels the bare machine lacks are carried in .whl/ (bench/fetch_gpu_wheels.sh --train, plus deepspeed).
#   bash bench/device_run.sh            # the real job at full size: train.py with experiment=fast_gpu and with
#                                       # trainer=deepspeed_a100, ZeRO checkpoint -> export -> plain transformers
#                                       # logits check, evaluate.py with long_ppl and passkey at 32k
#   bash bench/device_run.sh --bench    # the earlier checks: bench loop, GPU tests, tiny Lightning runs
#   bash bench/device_run.sh --dry-run  # CPU: compose every command and check it (Hydra --cfg job, --help)
# Raw logs go to $OUT (one <step>.txt per step, GPU memory samples in <step>.mem). Knobs: STEPS (training
# steps per run), KIWI_DATA (a jsonl/parquet/txt glob for data=local; unset: the offline corpus).
set -u
MODE=full
for arg in "$@"; do
  case $arg in
    --dry-run) MODE=dry ;;
    --bench) MODE=bench ;;
    *) echo "bench/device_run.sh: unknown option $arg (use --dry-run or --bench)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false KIWI_CACHE=${KIWI_CACHE:-/tmp/kiwi-cache}
if [ "$MODE" != dry ] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/env.txt"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
RUNS=${RUNS:-/tmp/kiwi-runs}
mkdir -p "$RUNS"
STEPS=${STEPS:-30}
BASE=$RUNS/qwen2.5-0.5b-random   # random-init Qwen2.5-0.5B config + the exact tokenizer (bench/full_size_smoke.py)
if [ -n "${KIWI_DATA:-}" ]; then DATA=(data=local "data.source.files=[${KIWI_DATA}]"); else DATA=(data=corpus); fi
FULL=(model.base="$BASE" model.layer_selection=interleave "${DATA[@]}" data.seq_len=32768 data.batch_size=1
      data.val_documents=2 data.val_tokens=32768 validate_before=false trainer.max_steps="$STEPS"
      trainer.log_every_n_steps=5 logger=csv)

FAILED=0
step() {  # name, timeout, kind (hydra | script | python), command...; dry-run: check instead of run
  local name=$1 limit=$2 kind=$3; shift 3
  if [ "$MODE" = dry ]; then
    local check=("$@")
    case $kind in
      hydra) check+=(--cfg job) ;;
      script) check+=(--help) ;;
      python) check=("$PY" -c "import ast, sys; sys.path.insert(0, 'bench'); import full_size_smoke; ast.parse(sys.argv[1])"
                     "${@: -1}") ;;
    esac
    echo "$*" > "$OUT/$name.cmd"
    if "${check[@]}" > "$OUT/$name.dry" 2>&1; then echo "dry-run ok: $name"; else echo "dry-run FAILED: $name"; FAILED=1; fi
    return
  fi
  echo "== $name: $*" >> "$OUT/$name.txt"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/$name.mem" 2>/dev/null &
  local sampler=$! t0=$SECONDS
  timeout "$limit" "$@" >> "$OUT/$name.txt" 2>&1
  local rc=$?
  kill "$sampler" 2>/dev/null
  echo "== exit $rc after $((SECONDS - t0)) s; peak GPU memory used $(sort -n "$OUT/$name.mem" | tail -1) MiB" \
    >> "$OUT/$name.txt"
  [ $rc = 0 ] || FAILED=1
}

if [ "$MODE" != dry ]; then
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
fi

if [ "$MODE" = bench ]; then
  step train_throughput 170 script "$PY" bench/train_throughput.py --size full --out "$OUT/train_throughput.md" \
    --variants ${BENCH_VARIANTS:-hf_baseline,kiwi_ckpt_full,kiwi_ckpt_mlp,kiwi_ckpt_every3}
  step gpu_tests 80 plain "$PY" -m pytest tests/model tests/upscale/test_gpu.py -m gpu -q -p no:cacheprovider -rs
  step train_gpu 80 hydra "$PY" train.py experiment=quickstart trainer=gpu logger=csv trainer.max_steps=20 \
    "hydra.run.dir=$RUNS/gpu"
  step train_deepspeed 70 hydra "$PY" train.py experiment=quickstart trainer=deepspeed_a100 logger=csv \
    trainer.max_steps=10 export_hf=false "hydra.run.dir=$RUNS/deepspeed"
else
  step make_base 60 python "$PY" -c "
import sys; from pathlib import Path; sys.path.insert(0, 'bench')
from full_size_smoke import make_base
out = Path('$BASE')
if not (out / 'config.json').exists(): make_base(out)"
  # tokens/s, MFU and peak memory per logged step: <run>/csv/metrics.csv (perf/tokens_per_s, perf/mfu, perf/peak_mem_gib)
  step train_fast_gpu 170 hydra "$PY" train.py experiment=fast_gpu "${FULL[@]}" export_hf=false \
    "hydra.run.dir=$RUNS/fast_gpu"
  step train_deepspeed 170 hydra "$PY" train.py trainer=deepspeed_a100 "${FULL[@]}" export_hf=false \
    "hydra.run.dir=$RUNS/deepspeed"
  step export 60 script "$PY" -m kiwi.train.export "$RUNS/deepspeed/checkpoints/last.ckpt" "$RUNS/export"
  step export_check 40 script "$PY" bench/export_check.py "$RUNS/deepspeed/checkpoints/last.ckpt" "$RUNS/export" \
    --out "$OUT/export_check.json"
  step evaluate_32k 100 hydra "$PY" evaluate.py compare_base=false evaluate_model=false "checkpoints=[$RUNS/export]" \
    "${DATA[@]}" "run_tasks=[long_ppl,passkey]" tasks.long_ppl.max_length=32768 tasks.long_ppl.documents=2 \
    tasks.long_ppl.concatenate=true "tasks.passkey.lengths=[1024,4096,16384,32768]" tasks.passkey.trials=4 \
    model.dtype=bfloat16 device=cuda token_budget=32768 progress=false "hydra.run.dir=$RUNS/eval"
fi

if [ "$MODE" != dry ]; then
  tar czf "$OUT/runs.tgz" --exclude='*.ckpt' --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' \
    -C "$RUNS" . 2>/dev/null
  ls -la "$OUT"
fi
exit $FAILED
