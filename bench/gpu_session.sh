#!/usr/bin/env bash
# The one prepared script of a session that is lent a GPU machine (issue 10: the `gpu`
# preset's real results). It runs from the repository root, with no install (PYTHONPATH),
# and leaves everything it measured under $OUT, in at most 8 files:
#   env.txt             python, torch, CUDA, the GPU
#   bench_training.txt  train() step against a bare loop on pre-generated tensors, on the
#                       gpu preset's network, for gaussian / calpha / disks (images drawn
#                       on the GPU, as in the run): how long the GPU waits on data
#   gpu_util.csv        nvidia-smi utilization and memory, one line a second, during both
#   run.log             the log of a smoke run on the device first (every cell kind on the
#                       GPU in under a minute: a CUDA-only fault stops the script there,
#                       before the device time of the real run is spent), the tests that
#                       need CUDA, then the run's log (cells, failures, wall time)
#   reports.tar.gz      reports/ of the run (README, CSV, PNG), when the run finished
#   cache.tgz.aa ...    the cells' JSON records (checkpoints left out), in parts of at most
#                       15 MB (the tool's limit per file), so that `run_all.py
#                       --report-only` can rebuild the report here, also from a run that
#                       DEADLINE cut short
#
# The reference cells (CPU work: the C^α bracket takes minutes per cell; the main study's
# have the default preset's specs) need no GPU: compute them beforehand on
# the development machine into .gpucache/ (git-ignored; 13 minutes on 2 cores) with
#   echo /.gpucache/ >> .git/info/exclude
#   python run_all.py --preset gpu --kinds reference --cache .gpucache --out /tmp/gpu-refs
# and carry it; the run finds them stored (their keys hash the code: recompute them after
# any change to the modules they depend on) and computes only what needs the GPU. Without
# .gpucache/ the run computes them too, in more time than the run has.
#
# Before the call, on the development machine (the GPU image has no PyWavelets; the script
# installs the carried wheel only where `import pywt` fails):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl PyWavelets==1.9.0
# Then with the device tool: run(command="bash bench/gpu_session.sh", carry=[".whl",
# ".gpucache"], timeout_s=595). Unpack here with `cat cache.tgz.* | tar xzf -`, rebuild
# the report from its records with `python run_all.py --preset gpu --report-only --out
# reports/gpu --cache <unpacked>/cache`, and commit reports/gpu/.
#
# Settings (environment): PRESET (gpu), DEVICE (cuda), DEADLINE (seconds from the start
# of the script by which everything is packed, 575: the device tool allows 600 per call;
# the run gets what the smoke run, the tests and the bench leave of it, less 25 s to
# pack), BENCH_STEPS (200 on a GPU, 2 on a CPU: train()'s set-up, ~30 ms, is then a few
# per cent of its time), BENCH_REPEATS (5; 1 on a CPU). On a CPU, for a check of this
# script: OUT=/tmp/gpu_out PRESET=smoke DEVICE=cpu bash bench/gpu_session.sh
# Exit status: 0 the run finished; 3 the CUDA smoke run or a CUDA test failed (nothing
# else ran); 4 no time was left for the run; 5 the deadline cut the run short (its
# stored cells are packed); else run_all's own (1: some cells failed, the report and
# the packed records say which; everything is packed either way).
set -uo pipefail
t0=$(date +%s)
OUT=${OUT:-/tmp/gpu_out}
PRESET=${PRESET:-gpu}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-575}
if [ "$DEVICE" = cpu ]; then steps=2 repeats=1; else steps=200 repeats=5; fi
BENCH_STEPS=${BENCH_STEPS:-$steps}
BENCH_REPEATS=${BENCH_REPEATS:-$repeats}
mkdir -p "$OUT"
rm -f "$OUT"/cache.tgz.* "$OUT/reports.tar.gz"  # a reused $OUT: no stale parts
: > "$OUT/run.log"
export PYTHONUNBUFFERED=1
if ! python3 -c "import pywt" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python3 - > "$OUT/env.txt" 2>&1 <<'PY'
import os, platform, torch, pywt
print("python", platform.python_version(), "torch", torch.__version__, "pywt", pywt.__version__)
print("cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("cpus", os.cpu_count(), "tf32 conv", torch.backends.cudnn.allow_tf32,
      "tf32 matmul", torch.backends.cuda.matmul.allow_tf32)
PY
cat "$OUT/env.txt"

monitor=""
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 \
        > "$OUT/gpu_util.csv" 2>&1 &
    monitor=$!
fi
trap '[ -n "$monitor" ] && kill "$monitor" 2> /dev/null' EXIT

stop() {  # a CUDA-only fault: stop before the run spends the lease
    echo "$1 on $DEVICE failed: stopping" | tee -a "$OUT/run.log"
    tail -n 40 "$OUT/run.log"
    exit 3
}
if [ "$DEVICE" != cpu ]; then
    timeout 150 python3 run_all.py --preset smoke --device "$DEVICE" --out /tmp/smoke \
        --cache /tmp/smoke_cache --quiet >> "$OUT/run.log" 2>&1
    smoke=$?
    if [ "$smoke" -ne 0 ] || ! grep -q " 0 failed)" "$OUT/run.log"; then
        grep -ih "fail" /tmp/smoke/README.md >> "$OUT/run.log" 2> /dev/null
        stop "the smoke run (exit status $smoke)"
    fi
    tail -n 1 "$OUT/run.log"
    # the tests that need CUDA (skipped on the CPU machines): generators drawing on the GPU
    # (in one process: setup.cfg's -n auto would start a worker per core, and needs
    # pytest-xdist, which the device's image may lack)
    timeout 90 python3 -m pytest -q -p no:cacheprovider -o addopts='-m "not heavy"' \
        tests/test_calpha.py tests/test_disks.py tests/test_distributions.py -k cuda \
        > /tmp/cuda_tests.log 2>&1
    tests=$?
    tail -n 5 /tmp/cuda_tests.log | tee -a "$OUT/run.log"
    [ "$tests" -eq 0 ] || stop "the CUDA tests (exit status $tests)"
fi

for family in gaussian calpha disks; do  # the gpu preset's network and batch
    echo "== $family"
    timeout 120 python3 bench/bench_training.py --preset gpu --device "$DEVICE" \
        --family "$family" --steps "$BENCH_STEPS" --repeats "$BENCH_REPEATS"
done > "$OUT/bench_training.txt" 2>&1
cat "$OUT/bench_training.txt"

cache=$(mktemp -d)/cache
mkdir -p "$cache"
[ -d .gpucache ] && cp -r .gpucache/. "$cache"
echo "carried reference records: $(ls "$cache/reference" 2> /dev/null | wc -l)" \
    | tee -a "$OUT/run.log"
start=$(date +%s)
limit=$(( DEADLINE - (start - t0) - 25 ))
echo "run limit $limit s" | tee -a "$OUT/run.log"
if [ "$limit" -lt 60 ]; then  # `timeout 0` would mean no limit at all
    echo "no time left for the run" | tee -a "$OUT/run.log"
    status=4
else
    timeout -k 10 "$limit" python3 run_all.py --preset "$PRESET" --device "$DEVICE" \
        --out "$OUT/reports" --cache "$cache" --quiet >> "$OUT/run.log" 2>&1
    status=$?
    [ "$status" -eq 124 ] && status=5  # 124 would read as the device tool's own timeout
fi
echo "run status $status (exit codes: this script's header) after $(( $(date +%s) - start )) s" \
    | tee -a "$OUT/run.log"
tail -n 3 "$OUT/run.log"

[ -d "$OUT/reports" ] && tar czf "$OUT/reports.tar.gz" -C "$OUT" reports && rm -rf "$OUT/reports"
(cd "$(dirname "$cache")" && find cache -name '*.json' | tar czf - -T - \
    | split -b 15M - "$OUT/cache.tgz.")
ls -l "$OUT"
exit "$status"
