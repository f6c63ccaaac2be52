#!/usr/bin/env bash
# The GPU check: everything a lent GPU should measure, in one device call that ends by itself
# inside 9 minutes (the device tool allows 10 a command and 15 a session, start-up included).
#
#   bash benchmarks/gpu_check.sh OUTDIR              # on the lent GPU, through the device tool:
#                                                    #   command "bash benchmarks/gpu_check.sh $OUT/gpu-check",
#                                                    #   carry [".whl"] (diffusers, see benchmarks/README.md)
#   bash benchmarks/gpu_check.sh OUTDIR --dry-run    # the same script on the CPU with tiny sizes
#                                                    #   (tests/test_gpu_check.py runs it)
#
# Parts, in this order; each writes its raw results into OUTDIR as soon as it ends, so a run cut
# off by the device tool still returns what it did.  A failing part does not stop the others; each
# part's exit status, seconds and whether its time ran out go to OUTDIR/parts.jsonl.
#   1. env      nvidia-smi, library versions, commit, date                        -> env.json, nvidia-smi.txt
#   2. tests    the GPU tests (pytest -m gpu)                                      -> gpu-tests.log, gpu-tests.xml
#   3. bench    cifar10 U-Net DDIM-50 at batch 1 and 256: inductor-cuda and torch-cuda-graph against
#               diffusers fp16 eager and + torch.compile, one run (ms per image, host time per step,
#               TFLOP/s; the graph rows' host time per step is the host time per launch)    -> bench/
#   4. kernels  the fused update against NumPy, its bandwidth with and without noise against a
#               device copy                                                        -> gpu-kernels.json
#   5. graph    host time of one CUDA graph launch against what the graph holds   -> graph-launch.json
#   6. solvers  DPM-Solver++ and UniPC per-step time against DDIM at batch 64     -> solvers-*/
#   7. package  the AOTInductor .pt2: build, rows, a fresh process's warm start   -> package/
# Then benchmarks/gpu_check_summary.py writes summary.md and summary.json: each figure beside its target.
#
# In --dry-run the parts run on the CPU: the tests are collected, not run; the bench and solvers run
# the tiny U-Net for 2 steps on torch-cpu; the kernel and graph scripts, which need a GPU, only parse
# their arguments (--help); the package part (a CPU .pt2 build takes minutes) is skipped.
set -uo pipefail
usage="usage: gpu_check.sh OUTDIR [--dry-run]"
out=${1:?$usage}
dry=0
case "${2:-}" in
  --dry-run) dry=1 ;;
  "") ;;
  *) echo "gpu_check.sh: unknown option ${2}; $usage" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$(date +%s)
budget=${GPU_CHECK_SECONDS:-540}
deadline=$((start + budget))
py=${PYTHON:-python3}
parts="$out/parts.jsonl"
: > "$parts"

if [ "$dry" = 0 ]; then
  source "$here/gpu_env.sh"
fi
export DDPMRT_CACHE_DIR=${DDPMRT_CACHE_DIR:-$(mktemp -d /tmp/ddpmrt-cache.XXXX)}

# part NAME SECONDS COMMAND...: run COMMAND with at most SECONDS (and never past the deadline),
# its output in OUTDIR/NAME.log, its outcome as one line of parts.jsonl.
part() {
  local name=$1 want=$2
  shift 2
  local now left limit t0 rc
  now=$(date +%s)
  left=$((deadline - now - 5))
  limit=$(( want < left ? want : left ))
  if [ "$limit" -le 5 ]; then
    printf '{"part": "%s", "skipped": "no time left of %s s"}\n' "$name" "$budget" >> "$parts"
    echo "== $name: skipped, no time left" >&2
    return 0
  fi
  echo "== $name (at most $limit s)" >&2
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  printf '{"part": "%s", "rc": %d, "seconds": %d, "limit_s": %d, "timed_out": %s, "dry_run": %s}\n' \
    "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" "$([ $rc = 124 ] || [ $rc = 137 ] && echo true || echo false)" \
    "$([ $dry = 1 ] && echo true || echo false)" >> "$parts"
  echo "   rc $rc" >&2
}

skip() {  # skip NAME REASON
  printf '{"part": "%s", "skipped": "%s"}\n' "$1" "$2" >> "$parts"
  echo "== $1: skipped ($2)" >&2
}

if [ "$dry" = 1 ]; then
  model=(--random-weights tiny --steps 2 --runs 2 --warmup 0 --threads 1)
  gpu_backends=torch-cpu
  b_big=1,2
  b_solvers=2
else
  model=(--random-weights cifar10 --steps 50 --runs 5 --warmup 2)
  gpu_backends=inductor-cuda,torch-cuda-graph
  b_big=1,256
  b_solvers=64
fi

# 1. env
part env 60 "$py" "$here/gpu_check_env.py" --out "$out/env.json" --nvidia-smi "$out/nvidia-smi.txt"

# 2. tests
if [ "$dry" = 1 ]; then
  part tests 120 "$py" -m pytest -q -p no:cacheprovider -m gpu --collect-only tests
else
  part tests 150 "$py" -m pytest -q -rs -p no:cacheprovider -m gpu --junitxml="$out/gpu-tests.xml" tests
fi

# 3. bench (diffusers eager and compiled in the same run: --diffusers-compiled auto compiles it on a GPU)
if [ "$dry" = 1 ]; then
  part bench 240 "$py" -m ddpmrt.export bench --out "$out/bench" --quiet "${model[@]}" --batch "$b_big" --backends "$gpu_backends" --no-startup \
    --diffusers-compiled never
else
  part bench 240 "$py" -m ddpmrt.export bench --out "$out/bench" --quiet "${model[@]}" --batch "$b_big" --backends "$gpu_backends" --no-startup \
    --diffusers-compiled auto
fi

# 4. kernels, 5. graph launches
if [ "$dry" = 1 ]; then
  part kernels 60 "$py" "$here/gpu_kernels.py" --help
  part graph 60 "$py" "$here/graph_launch.py" --help
else
  part kernels 60 "$py" "$here/gpu_kernels.py" --out "$out/gpu-kernels.json"
  part graph 45 "$py" "$here/graph_launch.py" --out "$out/graph-launch.json" --kernels 1000,4000 --runs 3
fi

# 6. solvers: the same 20 network calls per image each, one graph per loop
solver_backend=$([ "$dry" = 1 ] && echo torch-cpu || echo inductor-cuda)
for sampler in ddim dpmsolver unipc; do
  part "solvers-$sampler" 60 "$py" -m ddpmrt.export bench --out "$out/solvers-$sampler" --quiet "${model[@]}" --steps "$([ "$dry" = 1 ] && echo 2 || echo 20)" \
    --batch "$b_solvers" --sampler "$sampler" --backends "$solver_backend" --no-startup --no-diffusers
done

# 7. the AOTInductor package: its build, rows and a fresh process's start (two processes)
if [ "$dry" = 1 ]; then
  skip package "dry run: a CPU .pt2 build takes minutes"
else
  part package 150 "$py" -m ddpmrt.export bench --out "$out/package" --quiet "${model[@]}" --batch 1 --backends inductor-package-cuda --no-diffusers
fi

"$py" "$here/gpu_check_summary.py" "$out"
echo "gpu_check.sh: $(( $(date +%s) - start )) s; results in $out (summary.md)" >&2
