#!/usr/bin/env bash
# One GPU check in about 8 minutes on one H100/H200: the `gpu`-marked tests, VOS frames/s per model size
# (t, s, b+, l; eager, then compiled while time is left) against the official sam2==1.1.0 package, and one
# b+ training step at 1024 px x 8 frames with peak memory and MFU, without and with the memory savers.
#
# The GPU machine has no network. Prepare here (with the package registry), once:
#     bash benchmarks/gpu_check.sh prepare
# which puts Python 3.12 wheels of what the GPU image lacks into .whl/ (ignored by git) and installs the
# official package into .cache/sam2_ref (as tests/sam2_oracle.py does). Then, on the GPU machine, from the
# repository root, with .whl and .cache/sam2_ref carried along:
#     bash benchmarks/gpu_check.sh
# Tables go to stdout and, when $OUT is set, to $OUT/gpu_check.md (logs: $OUT/gpu_check_*.log).
#
# A CPU dry run of every Python step at toy sizes (no compile; the gpu tests skip):
#     GPU_CHECK_DRY_RUN=1 PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
# Knobs: GPU_CHECK_BUDGET_S (default 470: seconds before no new phase starts), PYTHON (default python3).
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
PYTHON=${PYTHON:-python3}
if [[ "$PYTHON" == */* && "$PYTHON" != /* ]]; then
    PYTHON="$REPO/$PYTHON" # a relative path still works after a cd
fi
DRY=${GPU_CHECK_DRY_RUN:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
LOGDIR=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
REPORT="$LOGDIR/gpu_check.md"
WHEELS="$REPO/.whl"
ORACLE="$REPO/.cache/sam2_ref"
# What the GPU image (Python 3.12, torch 2.11) lacks of our imports; versions as in docker/requirements.txt.
BINARY_WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1 pycocotools==2.0.11)
SOURCE_ONLY=(antlr4-python3-runtime==4.9.3)  # no wheel on the index: built here (pure Python)

prepare() {
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" "${BINARY_WHEELS[@]}" || return 1
    "$PYTHON" -m pip wheel -q --no-deps -w "$WHEELS" "${SOURCE_ONLY[@]}" || return 1
    (cd tests && "$PYTHON" -c 'import sam2_oracle; print("official package in", sam2_oracle.ensure_oracle())') \
        || return 1
    ls -l "$WHEELS"
    du -sh "$WHEELS" "$ORACLE"
    echo "carry: .whl .cache/sam2_ref; run: bash benchmarks/gpu_check.sh"
}

if [[ "${1:-}" == "prepare" ]]; then
    prepare
    exit $?
fi

say() { echo "$*" | tee -a "$REPORT"; }
left() { echo $((BUDGET - SECONDS)); }
# phase NAME NEEDED_S TIMEOUT_S CMD...: runs CMD (output into the report) unless fewer than NEEDED_S seconds
# of the budget are left; never longer than TIMEOUT_S or the budget.
phase() {
    local name=$1 needed=$2 limit=$3
    shift 3
    local remaining
    remaining=$(left)
    if ((remaining < needed)); then
        say "### $name: skipped, ${remaining} s of the budget left (needs ~${needed} s)"
        return 0
    fi
    ((limit > remaining)) && limit=$remaining
    say "### $name (at ${SECONDS} s, limit ${limit} s)"
    local log="$LOGDIR/gpu_check_${name//[^A-Za-z0-9_]/_}.log"
    local started=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@" >"$log" 2>&1
    local rc=$?
    # Tables and one-line results only: the full log stays beside the report.
    grep -E '^(\||size |[a-z+]+ +[0-9]|  [a-z+]+ round|device|ratio|VOS|official|training|[0-9]+ (passed|failed|skipped)|=+ .* =+$|FAILED|ERROR)' \
        "$log" | tee -a "$REPORT"
    if ((rc != 0)); then
        say "(exit $rc after $((SECONDS - started)) s; last lines of $log:)"
        tail -n 15 "$log" | tee -a "$REPORT"
    fi
    say ""
    return 0
}

: >"$REPORT"
say "# GPU check ($(date -u +%FT%TZ), dry run: $DRY)"

# --- Environment: missing packages from the carried wheels, the official package from .cache/sam2_ref.
if [[ "$DRY" != 1 && -d "$WHEELS" ]] && compgen -G "$WHEELS/*.whl" >/dev/null; then
    # Into the interpreter itself, so the subprocesses that reset PYTHONPATH (the oracle's) see them too.
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile "$WHEELS"/*.whl \
        || say "warning: installing the carried wheels failed"
fi
export SAM2_ORACLE_DIR="$ORACLE" PYTHONUNBUFFERED=1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c 'import hydra, omegaconf, pycocotools, torch, sam2.build_sam' 2>"$LOGDIR/gpu_check_imports.log"; then
    say "cannot import the project's needs (run 'bash benchmarks/gpu_check.sh prepare' here and carry .whl):"
    tail -n 5 "$LOGDIR/gpu_check_imports.log" | tee -a "$REPORT"
    exit 1
fi
"$PYTHON" - <<'EOF' | tee -a "$REPORT"
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, {name}")
EOF
if [[ -f "$ORACLE/sam2/__init__.py" ]]; then
    say "official package: $ORACLE"
else
    say "official package absent from $ORACLE: comparisons print n/a, oracle tests skip"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | tee -a "$REPORT"
say ""

if [[ "$DRY" == 1 ]]; then
    DEVICE=cpu SIZES=(t) VOS_ARGS=(--resolution 128 --frames 3 --frame-size 96x128 --threads 1)
    TRAIN_ARGS=(--device cpu --sizes t --resolutions 128 --frames 3 --objects 2 --steps 1 --warmup 0)
    SERVE_ARGS=(--size t --resolution 128 --frames 3 --frame-size 96x128 --threads 1 --rounds 1)
    COMPILE=0
else
    DEVICE=cuda SIZES=(t s b+ l) VOS_ARGS=(--resolution 1024 --frames 24 --frame-size 480x854)
    TRAIN_ARGS=(--device cuda --sizes b+ --resolutions 1024 --frames 8 --objects 3 --steps 3 --warmup 1)
    SERVE_ARGS=(--size b+ --resolution 1024 --frames 24 --frame-size 480x854 --rounds 2)
    COMPILE=1
fi

# --- 1. The gpu-marked tests (they skip without CUDA).
phase gpu_tests 60 150 "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider -o addopts="" tests/test_image_predictor.py \
    tests/test_training_data.py

# --- 2. One b+ training step at 1024 px x 8 frames, without and with the memory savers; FLOPs counted once.
phase train_step 90 200 "$PYTHON" benchmarks/train_step.py "${TRAIN_ARGS[@]}" --count-flops

# --- 3. VOS frames/s, eager, every size, ours against the official package.
phase vos_eager 60 200 "$PYTHON" benchmarks/vos_fps.py --device "$DEVICE" \
    --sizes "$(IFS=,; echo "${SIZES[*]}")" "${VOS_ARGS[@]}" --rounds 1

# --- 3b. The serving path (sam2.serving.tracking on uploaded frames, COCO RLE out) against vos_inference on
# the same clip: frames/s and peak memory (the image has no kserve, so no HTTP here; benchmarks/serving.py).
phase serving 60 150 "$PYTHON" benchmarks/serving.py --inproc --device "$DEVICE" "${SERVE_ARGS[@]}"

# --- 4. Compiled (vos_optimized=True, max-autotune on both sides), one size at a time while time is left.
if [[ "$COMPILE" == 1 ]]; then
    for size in t b+ s l; do
        phase "vos_compiled_$size" 90 240 "$PYTHON" benchmarks/vos_fps.py --device "$DEVICE" --sizes "$size" \
            "${VOS_ARGS[@]}" --rounds 1 --compile
    done
else
    say "### vos_compiled: not run in the dry run (torch.compile of four models takes minutes on a CPU)"
fi

say "done in ${SECONDS} s; logs in $LOGDIR"
