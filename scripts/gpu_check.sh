#!/usr/bin/env bash
# The CUDA checks, in one command on the GPU machine (see ../shared/gpu/README.md): build the kernels
# (timed), run the GPU tests (tests/cuda and the MACE backend's: parity, calculator, CUDA graphs, MD),
# compute-sanitizer memcheck and racecheck on a small problem, and the
# benchmark when scripts/bench_ops.py exists. From the repo root, with .whl/ carried:
#   bash scripts/gpu_check.sh
# Logs go to $OUT (the device tool's folder; /tmp/out elsewhere); the built extension is tarred into
# $OUT/batmobile_nn_cache.tar.gz: copy it into .whl/ here and the next run skips the build.
source scripts/gpu_env.sh

echo "=== build ($(date +%T))"
start=$(date +%s)
timeout "${BUILD_TIMEOUT:-420}" python3 -c "
import torch
from batmobile_nn import _build
print(_build.build(torch.device('cuda')))" 2>&1 | tee "$OUT/build.log" || { echo "BUILD FAILED"; exit 1; }
echo "build: $(( $(date +%s) - start )) s" | tee -a "$OUT/build.log"
(cd "$BATMOBILE_NN_CACHE" && tar -czf "$OUT/batmobile_nn_cache.tar.gz" */*.so)

echo "=== tests ($(date +%T))"
# TEST_WORKERS=N: N pytest processes (pytest-xdist) sharing the GPU; the run-time kernel compiles (NVRTC, CPU-bound)
# dominate the tests' time, and the kernels' disk cache is safe to share between processes
timeout "${TEST_TIMEOUT:-420}" python3 -m pytest -m cuda -q tests/cuda tests/mace_backend -p no:cacheprovider --timeout 240 \
    --maxfail 80 -rf --durations=12 ${TEST_WORKERS:+-n $TEST_WORKERS} 2>&1 | tee "$OUT/cuda-tests.log"

echo "=== compute-sanitizer ($(date +%T))"
cat > /tmp/sanitize_case.py <<'EOF'
# A small problem through every kernel: harmonics, convolution forward / backward / double backward
# (atomic and deterministic), the symmetric contraction, the per-element linear, and a uvw tensor product
# with shared weights.
import torch

import batmobile_nn  # noqa: F401  (before e3nn: sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD for e3nn 0.4.4)
from e3nn import o3
from batmobile_nn.ops import conv, make_plan, spherical_harmonics, tensor_product

torch.manual_seed(0)
dev = "cuda"
node, sh_irreps = o3.Irreps("8x0e+8x1o"), o3.Irreps.spherical_harmonics(3)
mid = []
instructions = []
for i, (mul, ir1) in enumerate(node):
    for j, (_, ir2) in enumerate(sh_irreps):
        for ir in ir1 * ir2:
            if ir.l <= 3:
                instructions.append((i, j, len(mid), "uvu", True))
                mid.append((mul, ir))
plan = make_plan(node, sh_irreps, o3.Irreps(mid), instructions)
uvw = make_plan("4x0e+4x1e+4x2e", "0e+1e+2e", "4x0e+4x1e+4x2e",
                [(a, b, c, "uvw", True) for a in range(3) for b in range(3) for c in range(3) if abs(a - b) <= c <= a + b])
seed_irreps = [(32, (l, 1)) for l in range(4)]
seed = make_plan(seed_irreps, "0e+1e+2e+3e", seed_irreps,
                 [(a, b, c, "uvw", True) for a in range(4) for b in range(4) for c in range(4) if abs(a - b) <= c <= a + b])
for dtype in (torch.float32, torch.float64):
    for deterministic in (False, True):
        receiver = torch.randint(0, 10, (40,), device=dev)
        receiver = receiver.sort().values if deterministic else receiver
        sender = torch.randint(0, 10, (40,), device=dev)
        vectors = torch.randn(40, 3, device=dev, dtype=dtype, requires_grad=True)
        x = torch.randn(10, node.dim, device=dev, dtype=dtype, requires_grad=True)
        w = torch.randn(40, plan.weight_numel, device=dev, dtype=dtype, requires_grad=True)
        sh = spherical_harmonics(vectors, [0, 1, 2, 3], True, "component")
        out = conv(x, sh, w, sender, receiver, None, plan.plan_list, plan.cg_list, deterministic)
        grads = torch.autograd.grad(out.square().sum(), [x, vectors, w], create_graph=True)
        torch.autograd.grad(sum(g.square().sum() for g in grads), [x, vectors, w])
    # the symmetric contraction (product basis): 0e+1o out of 0e+1o+2e+3o, correlation 3, 4 channels
    from batmobile_nn.nn import SymmetricContraction
    with torch.device("cpu"):
        sc = SymmetricContraction("4x0e+4x1o+4x2e+4x3o", "4x0e+4x1o", 3, num_elements=3)
    sc = sc.to(dev, dtype)
    feats = torch.randn(10, 4, 16, device=dev, dtype=dtype, requires_grad=True)
    element = torch.tensor([0, 2, 2, 1, 0, 0, 2, 1, 1, 0], device=dev)
    (g,) = torch.autograd.grad(sc(feats, element).square().sum(), feats, create_graph=True)
    torch.autograd.grad(g.square().sum(), [feats] + [p for p in sc.parameters() if p.requires_grad])
    # the per-element linear (MACE's skip connection): forward, weight gradient, second derivatives
    from batmobile_nn.ops import element_linear
    xl = torch.randn(10, 5, 3, device=dev, dtype=dtype, requires_grad=True)
    wl = torch.randn(3, 5, 7, device=dev, dtype=dtype, requires_grad=True)
    (gl,) = torch.autograd.grad(element_linear(xl, element, wl, 0.5).square().sum(), xl, create_graph=True)
    torch.autograd.grad(gl.square().sum(), [xl, wl])
    a = torch.randn(16, 36, device=dev, dtype=dtype, requires_grad=True)
    b = torch.randn(16, 9, device=dev, dtype=dtype, requires_grad=True)
    wt = torch.randn(uvw.weight_numel, device=dev, dtype=dtype, requires_grad=True)
    y = tensor_product(a, b, wt, uvw.plan_list, uvw.cg_list)
    torch.autograd.grad(y.square().sum(), [a, b, wt])
    # the seed's uvw product at 32 channels: the per-problem uvw kernels (shared-memory tiles; 40 samples,
    # a full tile and a short one), forward, backward and the composed second derivatives
    a = torch.randn(40, seed.irreps_in1.dim, device=dev, dtype=dtype, requires_grad=True)
    b = torch.randn(40, 16, device=dev, dtype=dtype, requires_grad=True)
    wt = torch.randn(seed.weight_numel, device=dev, dtype=dtype, requires_grad=True)
    y = tensor_product(a, b, wt, seed.plan_list, seed.cg_list)
    grads = torch.autograd.grad(y.square().sum(), [a, b, wt], create_graph=True)
    torch.autograd.grad(sum(g.square().sum() for g in grads), [a, b, wt])
torch.cuda.synchronize()
print("sanitize case done")
EOF
python3 /tmp/sanitize_case.py > /dev/null 2>&1  # compile / cache warm-up outside the sanitizer
for tool in memcheck racecheck; do
  echo "--- $tool"
  # every kernel (ours are named batmobile_* in the extension, bm_* when compiled at run time)
  timeout "${SAN_TIMEOUT:-240}" /usr/local/cuda/bin/compute-sanitizer --tool $tool --error-exitcode 7 \
      python3 /tmp/sanitize_case.py 2>&1 | tail -15
  echo "$tool exit code: ${PIPESTATUS[0]}"
done 2>&1 | tee "$OUT/sanitizer.log"

if [ -n "${NCU:-}" ]; then  # Nsight Compute: one launch of each forward kernel at #3's shapes (scripts/profile_kernels.py)
  echo "=== ncu ($(date +%T))"
  timeout "${NCU_TIMEOUT:-150}" ncu --clock-control none --profile-from-start off --section SpeedOfLight \
      --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis --section WarpStateStats \
      --section ComputeWorkloadAnalysis python3 scripts/profile_kernels.py 2>&1 | grep -v -i warning > "$OUT/ncu.log"
  grep -E "^profiled|^  [a-z_]+.*\(|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Theoretical Occ|Issue Slots Busy|Warp Cycles Per Issued" \
      "$OUT/ncu.log" | head -80
fi

if [ -f scripts/bench_ops.py ] && [ -z "${NO_BENCH:-}" ]; then  # NO_BENCH=1: tests and sanitizers only
  echo "=== benchmark ($(date +%T))"
  timeout "${BENCH_TIMEOUT:-200}" python3 scripts/bench_ops.py --out "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 | \
      grep -v Warning | tail -40
fi
echo "=== done ($(date +%T))"
grep -E "passed|failed" "$OUT/cuda-tests.log" | tail -1
grep "exit code" "$OUT/sanitizer.log"
