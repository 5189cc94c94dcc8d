"""The forward kernels at issue #3's benchmark shapes, for Nsight Compute (GPU only).

Each case is warmed up (compilation, caches), then called once between ``cudaProfilerStart`` and
``cudaProfilerStop``, so that ``ncu --profile-from-start off`` profiles exactly one launch of each:

    ncu --clock-control none --profile-from-start off --section SpeedOfLight ... python3 scripts/profile_kernels.py

Cases (same problems as ``scripts/bench_ops.py``): spherical harmonics l = 3 on 150,000 vectors, the seed's
uvw tensor product (C = 32 on 20,000 samples, C = 64 on 150,000), and the MACE-MP-medium convolution
forward (170,000 edges, receiver-sorted) in float32 and float64. ``--only`` picks some of them.
"""

import argparse

import torch

import bench_ops  # scripts/ is sys.path[0] when run as a script
from batmobile_nn.ops import conv, make_plan, spherical_harmonics, tensor_product

CASES = ("sh", "tp32", "tp64", "conv32", "conv64")


def cases(device):
    """``name -> (description, call)`` with the inputs built."""
    made = {}
    vectors = torch.randn(150_000, 3, device=device)  # [n_edges, 3]
    made["sh"] = ("spherical_harmonics l=3, 150000 vectors, float32",
                  lambda: spherical_harmonics(vectors, [0, 1, 2, 3], True, "component"))
    for name, channels, n in (("tp32", 32, 20_000), ("tp64", 64, 150_000)):
        irreps_in1, irreps_in2, irreps_out, instructions = bench_ops.seed_tp(channels)
        plan = make_plan(irreps_in1, irreps_in2, irreps_out, instructions)
        x = torch.randn(n, irreps_in1.dim, device=device)  # [n, 16 C]
        y = torch.randn(n, irreps_in2.dim, device=device)  # [n, 16]
        w = torch.randn(plan.weight_numel, device=device)  # [34 C^2]
        made[name] = (f"seed uvw tensor product C={channels}, {n} samples, float32",
                      lambda x=x, y=y, w=w, plan=plan: tensor_product(x, y, w, plan.plan_list, plan.cg_list))
    irreps_node, irreps_sh, irreps_out, instructions = bench_ops.mace_medium_conv()
    plan = make_plan(irreps_node, irreps_sh, irreps_out, instructions)
    n_edges, n_nodes = 170_000, 170_000 // 35
    receiver = torch.randint(0, n_nodes, (n_edges,), device=device).sort().values  # [n_edges]
    sender = torch.randint(0, n_nodes, (n_edges,), device=device)  # [n_edges]
    for name, dtype in (("conv32", torch.float32), ("conv64", torch.float64)):
        x = torch.randn(n_nodes, irreps_node.dim, device=device, dtype=dtype)  # [n_nodes, 512]
        y = torch.randn(n_edges, irreps_sh.dim, device=device, dtype=dtype)  # [n_edges, 16]
        w = torch.randn(n_edges, plan.weight_numel, device=device, dtype=dtype)  # [n_edges, 1280]
        made[name] = (f"conv mace-mp-medium forward, {n_edges} edges, {dtype}, deterministic",
                      lambda x=x, y=y, w=w: conv(x, y, w, sender, receiver, None, plan.plan_list, plan.cg_list, True))
    return made


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    args = parser.parse_args()
    wanted = args.only.split(",")
    unknown = sorted(set(wanted) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    if not torch.cuda.is_available():
        raise SystemExit("profile_kernels.py needs a GPU")
    device = torch.device("cuda")
    made = cases(device)
    with torch.no_grad():
        for name in wanted:
            for _ in range(3):
                made[name][1]()
        torch.cuda.synchronize()
        for name in wanted:
            print(f"profiled: {name}: {made[name][0]}", flush=True)
            torch.cuda.cudart().cudaProfilerStart()
            made[name][1]()
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()


if __name__ == "__main__":
    main()
