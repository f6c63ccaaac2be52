#!/usr/bin/env bash
# Every GPU measurement of the kernels and benchmarks issues, for the lent device machine.
#
# One part per device call (each ends well inside the 10-minute limit); results go to OUTDIR,
# whose JSON/Markdown/PNG files are then committed under benchmarks/results/:
#
#   bash benchmarks/gpu_session.sh tests   "$OUT"   # GPU tests: kernel vs NumPy, device loop, torch/inductor, TensorRT
#   bash benchmarks/gpu_session.sh kernels "$OUT"   # accuracy and bandwidth (benchmarks/gpu_kernels.py), an
#                                                   # Nsight Compute profile of the update, and host time per
#                                                   # graph launch (benchmarks/graph_launch.py)
#   bash benchmarks/gpu_session.sh bench   "$OUT"   # cifar10 DDIM-50 at batch 1, 64, 256: inductor and torch graph
#                                                   # against diffusers fp16 eager and + torch.compile, one run
#   bash benchmarks/gpu_session.sh bench   "$OUT" 1 # the same for the batches named (if one call would pass the
#                                                   # device tool's 10 minutes: `1`, then `64,256`, each its own run)
#   bash benchmarks/gpu_session.sh levers  "$OUT"   # the inductor U-Net's execution choices one against another
#                                                   # (benchmarks/unet_levers.py: time-shift table, cuDNN search)
#   bash benchmarks/gpu_session.sh package "$OUT"   # the AOTInductor .pt2 (export-engine --flavour inductor): its
#                                                   # build, rows at batch 1, 64, 256 and a fresh process's start
#   bash benchmarks/gpu_session.sh solvers "$OUT"   # DDIM, DPM-Solver++ and UniPC per-step time in the device loop at
#                                                   # batch 1 and 64 (the update stays bandwidth-bound: within 3 % of DDIM)
#   bash benchmarks/gpu_session.sh report  "$OUT"   # digits and shapes reports on torch CUDA
#   bash benchmarks/gpu_session.sh curve   "$OUT"   # the Reference models' learning curve in one call: the
#                                                   # recipes in CURVE_MODELS (default digits, shapes and their
#                                                   # -minsnr5 variants) train side by side (TRAIN_SECONDS, default
#                                                   # 300), then judge their snapshots, latest first (JUDGE_SECONDS,
#                                                   # default 180) -> curve.json/md/png, curve.log, and each
#                                                   # recipe's last snapshot in models-digits/-shapes.tar.gz
#
# The device image has PyTorch, cuda-python and NVRTC but not diffusers: carry its wheel in .whl
# (see benchmarks/README.md); gpu_env.sh installs .whl/*.whl and ddpmrt itself into /tmp/site.
# Every part fails loudly: the first failing command stops the script with its exit status.
set -euo pipefail
part=${1:?usage: gpu_session.sh tests|kernels|bench|levers|package|solvers|report|curve OUTDIR [BATCHES]}
out=${2:?usage: gpu_session.sh tests|kernels|bench|levers|package|solvers|report|curve OUTDIR [BATCHES]}
mkdir -p "$out"
source "$(dirname "$0")/gpu_env.sh"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia-smi.csv"

keep() {  # copy a report's small files (not the ONNX/engines) into $out/$2; a report without JSON is a failure
  mkdir -p "$out/$2"
  cp "$1"/*.json "$out/$2"/
  cp "$1"/*.md "$1"/*.png "$out/$2"/ 2>/dev/null || true
}

case "$part" in
  tests)
    # The GPU tests (marked `gpu`: those that need one, and those that take another path where one is
    # visible), plus the device loop's CPU tests; pytest's exit status is the part's.
    python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests 2>&1 | tee "$out/gpu-tests.log"
    python3 -m pytest -q -p no:cacheprovider tests/test_device_loop.py 2>&1 | tee -a "$out/gpu-tests.log"
    ;;
  kernels)
    python3 benchmarks/gpu_kernels.py --out "$out/gpu-kernels.json"
    python3 benchmarks/graph_launch.py --out "$out/graph-launch.json"
    # Where the noisy update's time goes (issue 10, point 7): Nsight Compute on its first two launches,
    # the update with noise and without.  Not fatal: ncu may lack permission for the GPU's counters.
    if command -v ncu >/dev/null 2>&1; then
      ncu --kernel-name ddpmrt_update_kernel --launch-count 2 --section SpeedOfLight \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section WarpStateStats \
        --section InstructionStats python3 benchmarks/gpu_kernels.py --bandwidth-only --runs 1 --warmup 0 \
        --elements $((16 * 1024 * 1024)) --out /tmp/ncu-kernels.json > "$out/ncu-update.txt" 2>&1 \
        || echo "ncu failed (often: no permission for the GPU's counters): see $out/ncu-update.txt" >&2
    fi
    ;;
  bench)
    # diffusers' rows (eager and torch.compile'd) run in the same process: --diffusers-compiled auto.
    batches=${3:-1,64,256}
    python3 -m ddpmrt.export bench --random-weights cifar10 --batch "$batches" --steps 50 --runs 5 --warmup 2 \
      --backends torch-cuda-graph,inductor-cuda,onnxruntime-cuda,tensorrt --out /tmp/bench-cifar10 --quiet
    keep /tmp/bench-cifar10 "bench-cifar10-ddim50-batch${batches//,/-}"
    ;;
  levers)
    python3 benchmarks/unet_levers.py --batch "${3:-1,64,256}" --out "$out/unet-levers.json"
    ;;
  package)
    # The other way to a start within 10 s: a package built ahead of time, loaded without compiling.
    batches=${3:-1,64,256}
    python3 -m ddpmrt.export bench --random-weights cifar10 --batch "$batches" --steps 50 --runs 5 --warmup 2 \
      --backends inductor-package-cuda --no-diffusers --out /tmp/bench-package --quiet
    keep /tmp/bench-package "bench-cifar10-package-batch${batches//,/-}"
    ;;
  solvers)
    # The same 20 network calls per image for each sampler: per-step time in one run, one graph each.
    batches=${3:-1,64}
    for sampler in ddim dpmsolver unipc; do
      python3 -m ddpmrt.export bench --random-weights cifar10 --batch "$batches" --steps 20 --runs 5 --warmup 2 \
        --sampler "$sampler" --backends inductor-cuda,torch-cuda-graph --no-startup --no-diffusers \
        --out "/tmp/bench-$sampler" --quiet
      keep "/tmp/bench-$sampler" "bench-cifar10-$sampler-20-batch${batches//,/-}"
    done
    ;;
  report)
    for model in digits shapes; do
      python3 -m ddpmrt.export report "$model" --backend torch --device cuda --samplers full --samples 500 \
        --spacing leading,trailing,linspace --out "/tmp/report-$model" --quiet
      keep "/tmp/report-$model" "report-$model"
    done
    ;;
  curve)
    # The tiny U-Net leaves an H100 mostly idle, so the recipes train, then judge, at once; each stage is
    # bounded so the call ends inside the device tool's limit with what it has.  Eight files come back at
    # most: curve.json/md/png, one log, and per data set a tarball of each recipe's last snapshot.
    models=${CURVE_MODELS:-digits shapes digits-minsnr5 shapes-minsnr5}
    for model in $models; do
      ( python3 benchmarks/learning_curve.py train --out runs/gpu-curve --models "$model" --device cuda \
          --precision bf16 --steps 6000,12000,24000,48000,96000,192000 --seconds "${TRAIN_SECONDS:-300}"
        timeout "${JUDGE_SECONDS:-180}" python3 benchmarks/learning_curve.py judge --out runs/gpu-curve \
          --models "$model" --num 256 --seeds 0,1 --backend torch --device cuda \
          --results "runs/gpu-curve/results-$model" ) > "runs/gpu-curve-$model.log" 2>&1 &
    done
    wait
    for model in $models; do echo "== $model"; cat "runs/gpu-curve-$model.log"; done > "$out/curve.log"
    python3 benchmarks/learning_curve.py merge runs/gpu-curve/results-* --results "$out"
    last() { { find runs/gpu-curve/"$1" -maxdepth 1 -name 'step_*' ! -name '*.tmp' 2>/dev/null || true; } \
               | sort -t_ -k2 -n | tail -1; }
    for data in digits shapes; do
      snapshots=$(for model in $models; do case $model in "$data"*) last "$model" ;; esac; done)
      if [ -n "$snapshots" ]; then tar czf "$out/models-$data.tar.gz" $snapshots; fi
    done
    ;;
  *)
    echo "unknown part $part: use tests, kernels, bench, levers, package, solvers, report or curve" >&2
    exit 2
    ;;
esac
