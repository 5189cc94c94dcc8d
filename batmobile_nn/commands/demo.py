"""``batmobile-nn demo``: the ops once on a MACE-MP-medium-shaped convolution, with a timing."""

import time


def register(subparsers) -> None:
    import torch

    parser = subparsers.add_parser("demo", help="run the ops once on a MACE-shaped convolution")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--neighbours", type=int, default=20)
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch
    from e3nn import o3

    from ..nn import EquivariantConv
    from ..o3 import SphericalHarmonics

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
    node_feats = torch.randn(n_nodes, irreps_node.dim, device=device)  # [n_nodes, 512]
    weights = torch.randn(n_edges, conv.weight_numel, device=device)  # [n_edges, 1280]
    start = time.perf_counter()
    out = conv(node_feats, sh(vectors), weights, edge_index)  # [n_nodes, 5120]
    (grad_vectors,) = torch.autograd.grad(out.square().sum(), vectors)
    elapsed = time.perf_counter() - start
    print(f"batmobile_nn demo on {device}: {n_nodes} nodes, {n_edges} edges, "
          f"{irreps_node} x {irreps_sh} -> {len(instructions)} uvu paths")
    print(f"output {tuple(out.shape)}, gradient w.r.t. edge vectors {tuple(grad_vectors.shape)}, "
          f"finite: {bool(torch.isfinite(out).all() and torch.isfinite(grad_vectors).all())}")
    print(f"forward + backward: {elapsed * 1e3:.1f} ms")
    return 0
