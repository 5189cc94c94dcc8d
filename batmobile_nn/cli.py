"""The ``batmobile-nn`` command line."""

import argparse
import time
from typing import List, Optional


def _demo(args) -> int:
    """A short run of the ops on a MACE-MP-medium-shaped convolution: checks and timings."""
    import torch
    from e3nn import o3

    from .nn import EquivariantConv
    from .o3 import SphericalHarmonics

    device = torch.device(args.device)
    torch.manual_seed(0)
    irreps_node, irreps_sh = o3.Irreps("128x0e+128x1o"), o3.Irreps.spherical_harmonics(3)
    instructions, irreps_mid = [], []
    for i, (mul, ir_in) in enumerate(irreps_node):
        for j, (_, ir_edge) in enumerate(irreps_sh):
            for ir_out in ir_in * ir_edge:
                if ir_out in o3.Irreps("0e+1o+2e+3o"):
                    instructions.append((i, j, len(irreps_mid), "uvu", True))
                    irreps_mid.append((mul, ir_out))
    conv = EquivariantConv(irreps_node, irreps_sh, o3.Irreps(irreps_mid), instructions).to(device)
    sh = SphericalHarmonics(irreps_sh, normalize=True, normalization="component")
    n_nodes, n_edges = args.nodes, args.nodes * args.neighbours
    edge_index = torch.randint(0, n_nodes, (2, n_edges), device=device)
    vectors = torch.randn(n_edges, 3, device=device, requires_grad=True)
    node_feats = torch.randn(n_nodes, irreps_node.dim, device=device)
    weights = torch.randn(n_edges, conv.weight_numel, device=device)
    start = time.perf_counter()
    out = conv(node_feats, sh(vectors), weights, edge_index)
    (forces,) = torch.autograd.grad(out.square().sum(), vectors)
    elapsed = time.perf_counter() - start
    print(f"batmobile_nn demo on {device}: {n_nodes} nodes, {n_edges} edges, "
          f"{irreps_node} x {irreps_sh} -> {len(instructions)} uvu paths")
    print(f"output {tuple(out.shape)}, gradient w.r.t. edge vectors {tuple(forces.shape)}, "
          f"finite: {bool(torch.isfinite(out).all() and torch.isfinite(forces).all())}")
    print(f"forward + backward: {elapsed * 1e3:.1f} ms")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="batmobile-nn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the ops once on a MACE-shaped convolution")
    demo.add_argument("--device", default="cuda" if _cuda() else "cpu")
    demo.add_argument("--nodes", type=int, default=200)
    demo.add_argument("--neighbours", type=int, default=20)
    demo.set_defaults(func=_demo)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
