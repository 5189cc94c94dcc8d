# Sourced by the GPU machine's scripts (gpu_check.sh, gpu_grid.sh), from the repo root with .whl/ carried: the
# carried packages (.whl/setup.sh), $OUT, and the kernels' cache, unpacked once from .whl/batmobile_nn_cache.tar.gz
# when it is there (a copy of an earlier run's $OUT/batmobile_nn_cache.tar.gz).
source .whl/setup.sh || exit 1
set -o pipefail
OUT=${OUT:-/tmp/out}
export BATMOBILE_NN_CACHE=/tmp/batmobile_nn_cache MAX_JOBS=${MAX_JOBS:-16}
mkdir -p "$BATMOBILE_NN_CACHE"
if [ -f .whl/batmobile_nn_cache.tar.gz ] && [ ! -e "$BATMOBILE_NN_CACHE/.unpacked" ]; then
  tar -C "$BATMOBILE_NN_CACHE" -xzf .whl/batmobile_nn_cache.tar.gz && touch "$BATMOBILE_NN_CACHE/.unpacked"
fi
rm -f "$OUT/pip-install.log" "$OUT/oeq-build.log"  # setup.sh's logs: the device tool returns few files
