#!/usr/bin/env bash
# The one prepared script of a session that is lent a GPU machine (issue 10: the `gpu`
# preset's real results). It runs from the repository root, with no install (PYTHONPATH),
# and leaves everything it measured under $OUT, in at most 5 files:
#   env.txt             python, torch, CUDA, the GPU
#   bench_training.txt  train() step against a bare loop on pre-generated tensors, on the
#                       gpu preset's network, for gaussian / calpha / disks (data drawn on
#                       the device): how long the GPU waits on data
#   gpu_util.csv        nvidia-smi utilization and memory, one line a second, during both
#   run.log             the run's log (cells, failures, wall time)
#   reports.tar.gz      reports/ of the run (README, CSV, PNG) and the cells' JSON records,
#                       so that `run_all.py --report-only` can rebuild it here
#
# Before the call, on the development machine (the GPU image has no PyWavelets):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl PyWavelets==1.9.0
# Then with the device tool: run(command="bash bench/gpu_session.sh", carry=[".whl"],
# timeout_s=600). Unpack here with `tar xzf reports.tar.gz`, rebuild the report from its
# records with `python run_all.py --preset gpu --report-only --out reports/gpu
# --cache <unpacked>/cache` if needed, and commit reports/gpu/.
#
# Settings (environment): PRESET (gpu), DEVICE (cuda), RUN_LIMIT (seconds for the run,
# 500: the device tool allows 600 per call), BENCH_STEPS (32). On a CPU, for a check of
# this script: OUT=/tmp/gpu_out PRESET=smoke DEVICE=cpu bash bench/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
PRESET=${PRESET:-gpu}
DEVICE=${DEVICE:-cuda}
RUN_LIMIT=${RUN_LIMIT:-500}
BENCH_STEPS=${BENCH_STEPS:-32}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python3 - > "$OUT/env.txt" 2>&1 <<'EOF'
import platform, torch, pywt
print("python", platform.python_version(), "torch", torch.__version__, "pywt", pywt.__version__)
print("cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
cat "$OUT/env.txt"

monitor=""
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 \
        > "$OUT/gpu_util.csv" 2>&1 &
    monitor=$!
fi

for family in gaussian calpha disks; do  # the gpu preset's network and batch
    echo "== $family"
    python3 bench/bench_training.py --device "$DEVICE" --family "$family" --channels 32 \
        --blocks 3 --convs 2 --batch 128 --steps "$BENCH_STEPS" --repeats 2
done > "$OUT/bench_training.txt" 2>&1
cat "$OUT/bench_training.txt"

start=$(date +%s)
timeout "$RUN_LIMIT" python3 run_all.py --preset "$PRESET" --device "$DEVICE" \
    --out "$OUT/reports" --cache "$OUT/cache" --quiet > "$OUT/run.log" 2>&1
status=$?
echo "run_all exit status $status after $(( $(date +%s) - start )) s" | tee -a "$OUT/run.log"
tail -n 3 "$OUT/run.log"

[ -n "$monitor" ] && kill "$monitor"
(cd "$OUT" && find reports cache -name '*.json' -o -path 'reports/*' -type f 2>/dev/null \
    | tar czf reports.tar.gz -T - && rm -rf reports cache)
ls -l "$OUT"
exit "$status"
