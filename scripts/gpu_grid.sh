#!/usr/bin/env bash
# Issue #5's grid (scripts/bench_mace.py) on the GPU machine as several device commands, one run of one code
# (see ../shared/gpu/README.md for .whl/). Each command resumes the file of the one before:
#   RESUME=path/bench_mace_grid.json MODELS=small,medium DTYPES=float32,float64 bash scripts/gpu_grid.sh
# copies RESUME (if given) to $OUT/bench_mace_grid.json, measures the rows it lacks until LIMIT seconds after the
# start (default 585: a device command may run 600 s), and leaves the file in $OUT: copy it back here and pass
# it as RESUME to the next command (on a machine still warm, RESUME unset defaults to the copy the last command
# left in /tmp; RESUME= starts afresh). bench_mace keeps the file's rows only if the same code (source digest),
# device and versions wrote them, and measures again, whole, any group of the grid that lacks a backend (one cut
# by the time limit). Exit status: bench_mace's (0 also when the time limit stopped it: resume next command).
# TEST="tests/cuda tests/mace_backend" runs those tests' cuda-marked tests first (within 300 s). The kernels' cache
# is unpacked from .whl/batmobile_nn_cache.tar.gz when there, and packed into $OUT when not.
t0=$(date +%s)
source scripts/gpu_env.sh
[ -z "${RESUME+set}" ] && [ -f /tmp/bench_mace_grid.json ] && RESUME=/tmp/bench_mace_grid.json
if [ -n "${RESUME:-}" ]; then
  cp "$RESUME" "$OUT/bench_mace_grid.json" || { echo "=== RESUME=$RESUME: no such file"; exit 1; }
  echo "=== resuming from $RESUME"
fi
if [ -n "${TEST:-}" ]; then
  echo "=== test ($(date +%T))"
  timeout 300 python3 -m pytest -m cuda -q $TEST -p no:cacheprovider --timeout 190 -rf -n 8 -W ignore 2>&1 \
      | tail -25 | tee "$OUT/test.log"
fi
left=$(( ${LIMIT:-585} - ($(date +%s) - t0) - 25 ))  # 25 s for the cache's tar and the transfer
[ "$left" -ge 30 ] || { echo "=== no time left for the grid (${left} s)"; exit 1; }  # (timeout 0: no limit)
echo "=== grid ($(date +%T)), ${left} s"
timeout "$left" python3 scripts/bench_mace.py --models "${MODELS:-small,medium,large}" \
    --dtypes "${DTYPES:-float32,float64}" --atoms "${ATOMS:-1000,4913,19683}" \
    --backends "${BACKENDS:-e3nn,cueq,oeq,batmobile}" --modes inference,train --out "$OUT/bench_mace_grid.json" \
    --png none --resume 2>&1 | grep -v -i warn | cut -c1-260 | tee "$OUT/grid.log"
status=${PIPESTATUS[0]}  # bench_mace's status, or timeout's 124 when the time ran out
[ "$status" -eq 124 ] && { echo "=== the time limit stopped the grid: resume it in the next command"; status=0; }
cp "$OUT/bench_mace_grid.json" /tmp/bench_mace_grid.json 2>/dev/null  # the next command's RESUME while warm
built=$(cd "$BATMOBILE_NN_CACHE" && ls -d */*.so jit/*.cubin 2>/dev/null)
if [ ! -f .whl/batmobile_nn_cache.tar.gz ] && [ -n "$built" ]; then
  (cd "$BATMOBILE_NN_CACHE" && tar -czf "$OUT/batmobile_nn_cache.tar.gz" $built)
fi
echo "=== done ($(date +%T)), $(( $(date +%s) - t0 )) s, grid exit status $status"
exit "$status"
