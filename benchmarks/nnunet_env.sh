#!/usr/bin/env bash
# nnU-Net v2, the peer of benchmarks/quality.py and benchmarks/speed.py, in its own virtualenv.
#
#     bash benchmarks/nnunet_env.sh            # create benchmarks/.nnunet-venv (once) + trainer
#     NNUNET_VENV=/elsewhere bash benchmarks/nnunet_env.sh
#
# nnU-Net is never a dependency of jointseg: it lives in benchmarks/.nnunet-venv (git-ignored).
# Pinning torch==2.13.0 and torchvision==0.28.0 in the same install keeps pip from replacing the
# CPU torch with a CUDA build pulled in through timm -> torchvision. torchvision's compiled
# operators still fail to load against the CPU torch (`torchvision::nms does not exist`), so
# nnU-Net's trainer lookup crashes on its `primus` trainers (timm -> torchvision) before it
# reaches the shipped short trainers. The budget trainer (nnunet_budget_trainer.py) is copied to
# the top of nnunetv2/training/nnUNetTrainer/, where the lookup finds it before descending into
# packages. TORCH_PIN (default torch==2.13.0+cpu, the local CPU build) fails the install rather
# than fall back to a CUDA build.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${NNUNET_VENV:-$HERE/.nnunet-venv}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/nnUNetv2_train" ]; then
    echo "[nnunet_env] creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet nnunetv2 "${TORCH_PIN:-torch==2.13.0+cpu}" torchvision==0.28.0
fi

TRAINER_DIR="$("$VENV/bin/python" - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("nnunetv2")
print(os.path.join(os.path.dirname(spec.origin), "training", "nnUNetTrainer"))
EOF
)"

cp "$HERE/nnunet_budget_trainer.py" "$TRAINER_DIR/nnUNetTrainerBudget.py"
echo "[nnunet_env] trainer nnUNetTrainerBudget in $TRAINER_DIR" >&2
echo "$VENV"
