#!/usr/bin/env bash
# One call on one H100/H200-class GPU machine (16 CPU cores, no internet), in the repository root,
# in under 8 minutes: ResNet-50 at 224 px, bf16-mixed, channels-last.
#
#   bash benchmarks/gpu_check.sh --data SHARDS_OR_FOLDER [--out PATH] [--venv PATH] [--budget S]
#   bash benchmarks/gpu_check.sh --dry-run --data DIR --out PATH      # every step, tiny, on CPU
#   bash benchmarks/gpu_check.sh --pack SRC[:SRC...] DST [--images N] [--max-mib M]
# Other options: --workers N (16), --batch-size N (128), --budget S (440: steps still to run when
# it is spent are recorded as skipped), --only/--skip STEP,..., --wheels DIR, --keep-work.
# Exit status: 0 when every step ran, 1 when one failed or timed out, 2 for bad arguments.
#
# Steps, each under its own time limit (`timeout`), each recorded with its result or its error in
# ONE results file ($OUT/gpu_check.json, or --out PATH; gpu_check.txt beside it is the same for
# people, gpu_check.log all the output), rewritten after every step, so a failing step or a kill
# loses nothing finished:
#   environment          python, torch, CUDA, GPU
#   throughput_rotation  benchmarks/throughput.py: model-only ceiling (synthetic batches on the GPU)
#   throughput_simclr    against the full pipeline from JPEG with --workers CPU workers and with
#   throughput_dino      --data.decode_on_device, and the ratios full/ceiling (goal >= 0.9)
#   jpeg_decode          batched JPEG decode on the GPU (device_decode) against the CPU workers
#   loss_agreement       20 seeded RotNet steps, fp32 (TF32 off) on the GPU and on the CPU, logged
#                        losses (CSVLogger metrics.csv) compared step by step
#   fsdp_dino_vit        one epoch of configs/pretrain/dino_vit.yaml (ViT-Tiny) with --trainer.strategy fsdp
#   fsdp_mae             one epoch of configs/pretrain/mae_quick.yaml on vit_tiny with fsdp
#   compile              the rotation ceiling with --model.compile true against eager
# --dry-run runs every step at tiny sizes on the CPU (resnet10t, 32 px, fp32, a few steps; device
# decoding on the CPU; ddp instead of fsdp, which Lightning refuses on a CPU), recording each
# substitution; a few minutes on 2 cores.
#
# Data: --data is a folder of tar shards (visiontransfer shard's layout) or an image folder. Pack a
# few thousand real JPEGs small enough to travel with the code (here: ../shared/data) with e.g.
#   bash benchmarks/gpu_check.sh --pack ../shared/data/raccoon/images:../shared/data/camvid/images:../shared/data/cifar10/train .gpu_data
# (4,000 JPEGs, 31 MiB: photos of 178-2000 px, 240x180 road scenes and 32x32 CIFAR-10).
#
# Python, the first that works: --venv PATH (a virtual environment or a Python executable); .venv
# if it imports what the steps need (and sees a GPU, outside --dry-run); the machine's python3 if
# it has torch (the GPU image's), plus the packages it lacks (MISSING below) installed without
# deps into a work folder on PYTHONPATH from --wheels DIR (default .whl, if present; no index),
# else from the index; else a fresh .venv (.venv-gpu-check if .venv exists) with
# `pip install -e .`. The repository itself is always imported from PYTHONPATH; the environment
# step records what was found and, outside --dry-run, stops the check if a package is missing.
# Wheels for the GPU image (cp312, 9 MiB), made where pip reaches the index:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl jsonargparse docstring-parser typeshed-client omegaconf albumentations==2.0.8 \
#     albucore==0.0.24 simsimd stringzilla pydantic pydantic-core annotated-types typing-inspection
# Without torchcodec there, the device decoder is torchvision's decode_jpeg (nvJPEG too).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
HELPER=benchmarks/gpu_check.py

DRY_RUN=0 DATA="" RESULTS="" VENV="" WHEELS="" BUDGET=440 WORKERS="" BATCH="" ONLY="" SKIP=""
PACK_SRC="" PACK_DST="" PACK_IMAGES=4000 PACK_MIB=48 KEEP_WORK=0

usage() { sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { echo "gpu_check.sh: $*" >&2; exit 2; }

while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --data) DATA=${2:?--data DIR}; shift ;;
        --out) RESULTS=${2:?--out PATH}; shift ;;
        --venv) VENV=${2:?--venv PATH}; shift ;;
        --wheels) WHEELS=${2:?--wheels DIR}; shift ;;
        --budget) BUDGET=${2:?--budget SECONDS}; shift ;;
        --workers) WORKERS=${2:?--workers N}; shift ;;
        --batch-size) BATCH=${2:?--batch-size N}; shift ;;
        --only) ONLY=${2:?--only STEP,...}; shift ;;
        --skip) SKIP=${2:?--skip STEP,...}; shift ;;
        --keep-work) KEEP_WORK=1 ;;
        --pack) PACK_SRC=${2:?--pack SRC DST}; PACK_DST=${3:?--pack SRC DST}; shift 2 ;;
        --images) PACK_IMAGES=${2:?--images N}; shift ;;
        --max-mib) PACK_MIB=${2:?--max-mib M}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

START=$(date +%s)
DEADLINE=$((START + BUDGET))
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1

# --- Python -----------------------------------------------------------------------------------

INSTALL_NOTE=""
usable() {  # usable PYTHON: imports what the steps need (and sees a GPU outside --dry-run)
    local check="import torch, lightning, timm, jsonargparse, albumentations"
    ((DRY_RUN)) || check+="; assert torch.cuda.is_available(), 'no CUDA'"
    "$1" -c "$check" >/dev/null 2>&1
}

# What the GPU image's python3 lacks (cp312 wheels, 9 MiB, installed without their deps).
MISSING=(jsonargparse docstring-parser typeshed-client omegaconf "albumentations>=2.0.4,<=2.0.8" albucore
    simsimd stringzilla pydantic pydantic-core annotated-types typing-inspection)

setup_python() {
    local log=$1 target
    if [[ -n $VENV ]]; then  # a virtual environment, or a Python executable
        if [[ -f $VENV && -x $VENV ]]; then PY=$VENV; else PY=$VENV/bin/python; fi
        [[ -x $PY ]] || die "--venv $VENV is neither a Python nor a folder with bin/python"
        INSTALL_NOTE="--venv $VENV"
        return
    fi
    if [[ -x .venv/bin/python ]] && usable .venv/bin/python; then
        PY=.venv/bin/python INSTALL_NOTE="existing .venv"
        return
    fi
    [[ -z $WHEELS && -d .whl ]] && WHEELS=.whl
    local check="import torch"
    ((DRY_RUN)) || check+="; assert torch.cuda.is_available()"
    if command -v python3 >/dev/null && python3 -c "$check" >/dev/null 2>&1; then
        # The machine's python3 has torch (the GPU image: /opt/torch/.venv, which a new venv's
        # --system-site-packages would not see): add what it lacks in a folder on PYTHONPATH.
        PY=$(command -v python3)
        if usable "$PY"; then
            INSTALL_NOTE="the machine's python3 ($PY)"
            return
        fi
        local pip=("$PY" -m pip install --disable-pip-version-check --no-input -q --no-deps --no-compile
            --target "$WORK/site")
        if [[ -n $WHEELS ]]; then
            "${pip[@]}" --no-index "$WHEELS"/*.whl >>"$log" 2>&1
            INSTALL_NOTE="the machine's python3 ($PY) + the wheels of $WHEELS in $WORK/site (exit status $?)"
        else
            "${pip[@]}" --retries 0 --timeout 10 "${MISSING[@]}" >>"$log" 2>&1
            INSTALL_NOTE="the machine's python3 ($PY) + ${MISSING[*]} from the index in $WORK/site (exit status $?)"
        fi
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
        return
    fi
    # A bare machine: a fresh virtual environment with the project installed.
    target=.venv
    [[ -e .venv ]] && target=.venv-gpu-check
    if [[ -x $target/bin/python ]] && usable "$target/bin/python"; then
        PY=$target/bin/python INSTALL_NOTE="existing $target"
        return
    fi
    python3 -m venv --system-site-packages "$target" >>"$log" 2>&1 || die "python3 -m venv $target failed"
    PY=$target/bin/python
    local pip=("$PY" -m pip install --disable-pip-version-check --no-input -q)
    if [[ -n $WHEELS ]]; then
        "${pip[@]}" --no-index --find-links "$WHEELS" -e . >>"$log" 2>&1
        INSTALL_NOTE="fresh $target: pip install -e . from $WHEELS (exit status $?)"
    else
        "${pip[@]}" --retries 0 --timeout 10 -e . >>"$log" 2>&1
        INSTALL_NOTE="fresh $target: pip install -e . (exit status $?)"
    fi
}

if [[ -n $PACK_SRC ]]; then
    if [[ -f $VENV && -x $VENV ]]; then PY=$VENV; elif [[ -n $VENV ]]; then PY=$VENV/bin/python; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
    exec "$PY" "$HELPER" pack "$PACK_SRC" "$PACK_DST" --images "$PACK_IMAGES" --max-mib "$PACK_MIB"
fi

[[ -n $DATA ]] || die "--data DIR is required (a shard folder or an image folder; see --pack)"
[[ -d $DATA ]] || die "--data $DATA is not a folder"
DATA=$(cd "$DATA" && pwd)
if [[ -z $RESULTS ]]; then
    if [[ -n ${OUT:-} ]]; then RESULTS=$OUT/gpu_check.json; else RESULTS=$REPO/gpu_check.json; fi
fi
mkdir -p "$(dirname "$RESULTS")"
RESULTS=$(cd "$(dirname "$RESULTS")" && pwd)/$(basename "$RESULTS")
LOGFILE=${RESULTS%.json}.log
# Work files (logs, checkpoints) stay out of $OUT: only the results, text and log come back.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
cleanup() { ((KEEP_WORK)) || rm -rf "$WORK"; }
trap cleanup EXIT
rm -f "$RESULTS" "${RESULTS%.json}.txt"
: >"$LOGFILE"

setup_python "$WORK/install.log"
cat "$WORK/install.log" >>"$LOGFILE" 2>/dev/null

# --- settings ---------------------------------------------------------------------------------

if ((DRY_RUN)); then
    MODE=dry-run BACKBONE=resnet10t SIZE=32 PRECISION=32-true STEPS=3 WARMUP=1
    WORKERS=${WORKERS:-2} BATCH=${BATCH:-8} ACCEL=cpu DECODE_DEVICE=cpu FSDP=ddp
    LOSS_ARGS=(--backbone resnet10t --image-size 32 --batch-size 8 --steps 6 --workers 2)
    VIT_BATCH=16 VIT_PRECISION=32-true
    DINO_VIT_ARGS=(--model.init_args.backbone_kwargs "{img_size: 32, patch_size: 8, dynamic_img_size: true}"
        --model.init_args.local_crops 2 --model.init_args.out_dim 256 --model.init_args.hidden_dim 128)
    MAE_ARGS=(--model.init_args.backbone test_vit)
    SCALE="resnet10t at 32 px, fp32, batch $BATCH, $STEPS timed steps, $WORKERS workers, on the CPU instead of ResNet-50 at 224 px bf16-mixed on a GPU"
else
    MODE=gpu BACKBONE=resnet50 SIZE=224 PRECISION=bf16-mixed STEPS=24 WARMUP=5
    WORKERS=${WORKERS:-16} BATCH=${BATCH:-128} ACCEL=gpu DECODE_DEVICE=cuda FSDP=fsdp
    LOSS_ARGS=(--backbone resnet18 --image-size 32 --batch-size 32 --steps 20 --workers 4)
    VIT_BATCH=256 VIT_PRECISION=bf16-mixed
    DINO_VIT_ARGS=()
    MAE_ARGS=(--model.init_args.backbone vit_tiny_patch16_224 --model.init_args.decoder_width 128
        --model.init_args.decoder_depth 2)
    SCALE=""
fi
# The timed steps stay inside one epoch (a new epoch restarts the shard workers).
if [[ -f $DATA/index.json ]]; then
    SAMPLES=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["samples"])' "$DATA/index.json")
    if ((SAMPLES / BATCH < STEPS + WARMUP)); then STEPS=$((SAMPLES / BATCH - WARMUP)); fi
    ((STEPS >= 2)) || die "--data holds $SAMPLES images: too few for batch $BATCH (pack more or pass --batch-size)"
fi
SETTING="$BACKBONE at $SIZE px, $PRECISION, channels-last, batch $BATCH, $WARMUP+$STEPS steps, $WORKERS CPU workers"
THROUGHPUT=(benchmarks/throughput.py --data "$DATA" --backbone "$BACKBONE" --image-size "$SIZE"
    --batch-size "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --workers "$WORKERS"
    --precision "$PRECISION" --channels-last --repeats 1 --skip-per-core)
FIT_COMMON=(--trainer.devices 1 --trainer.max_epochs 1 --trainer.log_every_n_steps 1
    --trainer.enable_progress_bar false --data.init_args.shards "$DATA" --data.init_args.num_workers "$WORKERS")
[[ -f $DATA/index.json ]] || FIT_COMMON=("${FIT_COMMON[@]/--data.init_args.shards/--data.init_args.root}")

# --- steps ------------------------------------------------------------------------------------

step_environment() {
    local require=()
    ((DRY_RUN)) || require=(--require-cuda)
    "$PY" "$HELPER" environment --out "$1" "${require[@]}" && { nvidia-smi 2>/dev/null || true; }
}
step_throughput() {  # METHOD RESULT
    "$PY" "${THROUGHPUT[@]}" --methods "$1" --decode-on-device --json "$2"
}
step_throughput_rotation() { step_throughput rotation "$1"; }
step_throughput_simclr() { step_throughput simclr "$1"; }
step_throughput_dino() { step_throughput dino "$1"; }
step_jpeg_decode() {
    "$PY" "$HELPER" decode "$DATA" --out "$1" --device "$DECODE_DEVICE" --workers "$WORKERS" \
        --batch-size "$BATCH" --repeats "$( ((DRY_RUN)) && echo 1 || echo 3)"
}
step_loss_agreement() {
    "$PY" "$HELPER" losses "$DATA" --out "$1" --work "$WORK/losses" --accelerator "$ACCEL" "${LOSS_ARGS[@]}"
}
fit_one_epoch() {  # NAME CONFIG RESULT EXTRA_ARGS...: one epoch with $FSDP, then its logged summary
    local name=$1 config=$2 result=$3
    shift 3
    "$PY" -m visiontransfer.cli fit --config "$config" "${FIT_COMMON[@]}" --trainer.accelerator "$ACCEL" \
        --trainer.strategy "$FSDP" --trainer.precision "$VIT_PRECISION" --data.init_args.batch_size "$VIT_BATCH" \
        --trainer.logger.init_args.save_dir "$WORK/$name" --trainer.logger.init_args.name "$name" \
        --trainer.default_root_dir "$WORK/$name" "$@" &&
        "$PY" "$HELPER" fit-summary "$WORK/$name" --out "$result" \
            --extra "{\"strategy\": \"$FSDP\", \"accelerator\": \"$ACCEL\", \"config\": \"$config\"}"
}
step_fsdp_dino_vit() {
    # Lightning's FSDP precision plugin refuses gradient clipping by norm (dino_vit.yaml clips at 3.0).
    fit_one_epoch fsdp_dino_vit configs/pretrain/dino_vit.yaml "$1" --trainer.gradient_clip_val null \
        "${DINO_VIT_ARGS[@]}"
}
step_fsdp_mae() { fit_one_epoch fsdp_mae configs/pretrain/mae_quick.yaml "$1" "${MAE_ARGS[@]}"; }
step_compile() {
    "$PY" "${THROUGHPUT[@]}" --methods rotation --ceiling-only --compile --json "$1"
}
export -f step_environment step_throughput step_throughput_rotation step_throughput_simclr \
    step_throughput_dino step_jpeg_decode step_loss_agreement fit_one_epoch step_fsdp_dino_vit step_fsdp_mae \
    step_compile
export DRY_RUN PY HELPER DATA WORK ACCEL DECODE_DEVICE FSDP WORKERS BATCH VIT_BATCH VIT_PRECISION
# Arrays can't be exported: hand them over as their declarations.
ARRAYS=$(declare -p THROUGHPUT LOSS_ARGS FIT_COMMON DINO_VIT_ARGS MAE_ARGS)

# name, time limit (s), what the dry run substitutes
STEPS_TABLE=(
    "environment 60 no GPU: the CPU"
    "throughput_rotation 120 $SCALE; decode_on_device decodes on the CPU"
    "throughput_simclr 120 $SCALE; decode_on_device decodes on the CPU"
    "throughput_dino 150 $SCALE, 2 local crops; decode_on_device decodes on the CPU"
    "jpeg_decode 90 device decode on the CPU (TorchCodec/libjpeg-turbo) instead of nvJPEG, $WORKERS workers"
    "loss_agreement 150 both runs on the CPU (no GPU to compare): resnet10t 32 px, 6 steps"
    "fsdp_dino_vit 150 --trainer.strategy ddp instead of fsdp (Lightning refuses FSDP on a CPU), ViT-Tiny patch 8, fp32, batch 16"
    "fsdp_mae 120 --trainer.strategy ddp instead of fsdp (Lightning refuses FSDP on a CPU), test_vit, fp32, batch 16"
    "compile 240 $SCALE"
)

record() { "$PY" "$HELPER" record "$RESULTS" "$@" >>"$LOGFILE" 2>&1; }
step_status() {
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["steps"][sys.argv[2]]["status"])' "$RESULTS" "$1"
}

CURRENT="" CURRENT_PID="" CURRENT_START=0
on_signal() {
    if [[ -n $CURRENT_PID ]]; then
        kill -TERM "$CURRENT_PID" 2>/dev/null
        wait "$CURRENT_PID" 2>/dev/null
        record "$CURRENT" --status timeout --seconds $(($(date +%s) - CURRENT_START)) \
            --error "the check itself was stopped during this step" --log "$WORK/$CURRENT.log"
    fi
    "$PY" "$HELPER" record "$RESULTS" --print \
        --meta "{\"finished\": \"$(date '+%F %T')\", \"complete\": false, \"total_seconds\": $(($(date +%s) - START))}"
    exit 143
}
trap on_signal TERM INT HUP

wanted() {  # wanted NAME: --only / --skip
    [[ -z $ONLY || ,$ONLY, == *,$1,* ]] && [[ ,$SKIP, != *,$1,* ]]
}

run_step() {  # run_step NAME LIMIT SUBSTITUTION
    local name=$1 limit=$2 subst="" rc status now left start_ns seconds
    ((DRY_RUN)) && subst=$3
    now=$(date +%s)
    left=$((DEADLINE - now))
    if ((left < 15)); then
        record "$name" --status skipped --note "out of the time budget (--budget $BUDGET s)" --substituted "$subst"
        return
    fi
    ((limit > left)) && limit=$left
    local log=$WORK/$name.log result=$WORK/$name.json
    record "$name" --status running --limit-s "$limit"
    echo "=== $name (limit $limit s) $(date '+%T')" | tee -a "$LOGFILE"
    start_ns=$(date +%s%N)
    CURRENT=$name CURRENT_START=$now
    timeout --kill-after=15 "$limit" bash -c "$ARRAYS; step_$name \"\$1\"" _ "$result" >"$log" 2>&1 &
    CURRENT_PID=$!
    wait "$CURRENT_PID"
    rc=$?
    CURRENT="" CURRENT_PID=""
    seconds=$(awk -v a="$start_ns" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    cat "$log" >>"$LOGFILE"
    if ((rc == 0)) && [[ -s $result ]]; then
        status=ok
    elif ((rc == 124 || rc == 137)); then
        status=timeout
    else
        status=error
        ((rc == 0)) && rc=1
    fi
    local extra=()
    [[ $status != ok ]] && extra=(--rc "$rc")
    [[ $name == fsdp_dino_vit ]] && extra+=(--note "--trainer.gradient_clip_val null: Lightning's FSDP refuses dino_vit.yaml's clipping by norm")
    record "$name" --status "$status" --seconds "$seconds" --limit-s "$limit" --result "$result" --log "$log" \
        --substituted "$subst" "${extra[@]}"
    echo "=== $name: $status in $seconds s" | tee -a "$LOGFILE"
}

META=$("$PY" -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' \
    mode "$MODE" started "$(date '+%F %T')" data "$DATA" setting "$SETTING" python "$PY" install "$INSTALL_NOTE" \
    budget_s "$BUDGET" work "$WORK")
record --meta "$META"

for row in "${STEPS_TABLE[@]}"; do
    read -r name limit subst <<<"$row"
    wanted "$name" || continue
    run_step "$name" "$limit" "$subst"
    if [[ $name == environment ]] && ((!DRY_RUN)) && [[ $(step_status environment) != ok ]]; then
        echo "environment failed (no CUDA or missing packages): the other steps are skipped" | tee -a "$LOGFILE"
        for other in "${STEPS_TABLE[@]:1}"; do
            wanted "${other%% *}" && record "${other%% *}" --status skipped --note "the environment step failed"
        done
        break
    fi
done

"$PY" "$HELPER" record "$RESULTS" --print \
    --meta "{\"finished\": \"$(date '+%F %T')\", \"complete\": true, \"total_seconds\": $(($(date +%s) - START))}"
echo "results: $RESULTS (and ${RESULTS%.json}.txt, ${RESULTS%.json}.log)"
# Exit status 1 when a step failed or ran out of time (the results file says which).
"$PY" -c 'import json, sys; s = json.load(open(sys.argv[1]))["summary"]["statuses"]; sys.exit(int(bool(s.get("error") or s.get("timeout"))))' "$RESULTS"
