#!/usr/bin/env bash
# The GPU path, on the device machine (one H100/H200, no network): the smollm2_gpu family (whole
# SmolLM2-135M trainable, bf16, ZeRO 2) through the project's own session and trainers.bench_session.
# Prepared here (results/gpu.json, field "preparation", says exactly how): .gpu/site holds deepspeed, hjson and the
# data packages copied from this venv, .gpu/smollm2-config the model's config and tokenizer, .whl the
# pydantic wheels for Python 3.12. The 514 MB weights cannot travel (64 MiB limit), so the model is
# SmolLM2-135M's architecture with random weights: the step time does not depend on the weights.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; B=/tmp/bench; mkdir -p "$OUT" $B
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 - <<'PY'
import shutil, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
src, dst = Path(".gpu/smollm2-config"), Path("/tmp/smollm2-random")
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src))
model.save_pretrained(dst)
for f in src.iterdir():
    if f.name != "config.json":
        shutil.copy(f, dst / f.name)
print("random-init SmolLM2-135M:", sum(p.numel() for p in model.parameters()), "parameters")
PY
sed 's#model: smollm2-135m#model: /tmp/smollm2-random#' configs/smollm2_gpu.yaml > /tmp/smollm2_gpu.yaml
sed -e 's#micro_batch_size: 8#micro_batch_size: 32#' -e 's#seq_len: 64#seq_len: 512#' /tmp/smollm2_gpu.yaml > /tmp/smollm2_gpu_b32_t512.yaml
for inst in arithmetic-deep bbc-topic-headline bbc-business-lm math-place-value; do
  timeout 100 python3 -m trainers.bench_session --config /tmp/smollm2_gpu.yaml --instance $inst --rounds 2 --json \
    --out "$B/$inst.json" 2>>"$OUT/stderr.txt" || echo "FAILED $inst: $(tail -3 "$OUT/stderr.txt")"
done
timeout 150 python3 -m trainers.bench_session --config /tmp/smollm2_gpu_b32_t512.yaml --instance bbc-business-lm --rounds 2 \
  --json --out "$B/bbc-business-lm_b32_t512.json" 2>>"$OUT/stderr.txt" || echo "FAILED big: $(tail -3 "$OUT/stderr.txt")"
python3 -c "import json,glob; json.dump({p.split('/')[-1][:-5]: json.load(open(p)) for p in sorted(glob.glob('$B/*.json'))}, open('$OUT/gpu_bench.json','w'), indent=1)"
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers', transformers.__version__, 'deepspeed', deepspeed.__version__)" 2>/dev/null
