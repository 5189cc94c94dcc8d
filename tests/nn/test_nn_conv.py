"""``batmobile_nn.nn.EquivariantConv`` against MACE's computation: e3nn's TensorProduct on gathered
sender features, then a scatter-sum onto the receivers (``edge_index[0]`` sender, ``edge_index[1]`` receiver)."""

import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant
from o3_cases import MACE_MP, PROBLEMS, assert_close

from batmobile_nn.nn import EquivariantConv

N_NODES, N_EDGES = 7, 19


def _edge_index(index_dtype=torch.int64, n_nodes=N_NODES, n_edges=N_EDGES, seed=0) -> torch.Tensor:
    """``[2, n_edges]`` random edges; the last node receives none."""
    generator = torch.Generator().manual_seed(seed)
    sender = torch.randint(0, n_nodes, (n_edges,), generator=generator)
    receiver = torch.randint(0, n_nodes - 1, (n_edges,), generator=generator)
    return torch.stack([sender, receiver]).to(index_dtype)


def _inputs(conv, n_edges=N_EDGES, shared=False, requires_grad=False):
    node_feats = torch.randn(N_NODES, conv.irreps_in1.dim, requires_grad=requires_grad)
    edge_attrs = torch.randn(n_edges, conv.irreps_in2.dim, requires_grad=requires_grad)
    weights = torch.randn(*(() if shared else (n_edges,)), conv.weight_numel, requires_grad=requires_grad)
    return node_feats, edge_attrs, weights


def mace_conv(e3nn_tp, node_feats, edge_attrs, tp_weights, edge_index):
    """What MACE's interaction does: ``conv_tp`` on the senders' features, ``scatter_sum`` onto receivers."""
    messages = e3nn_tp(node_feats[edge_index[0]], edge_attrs, tp_weights)  # [n_edges, irreps_out.dim]
    out = messages.new_zeros(node_feats.shape[0], messages.shape[1])
    return out.index_add(0, edge_index[1].long(), messages)  # [n_nodes, irreps_out.dim]


def _pair(problem, **kwargs):
    e3nn_tp = o3.TensorProduct(*problem, **kwargs)
    conv = EquivariantConv(*problem, **kwargs)
    conv.load_state_dict(e3nn_tp.state_dict(), strict=True)
    return e3nn_tp, conv


@pytest.mark.parametrize("name, index_dtype", [(name, torch.int64) for name in sorted(PROBLEMS)]
                         + [("mixed", torch.int32)], ids=lambda v: str(v).replace("torch.", ""))
def test_matches_e3nn_tensor_product_and_scatter(name, index_dtype, default_dtype):
    """Values, first derivatives and forces-style second derivatives (incl. through the output's cotangent)."""
    e3nn_tp, conv = _pair(PROBLEMS[name], shared_weights=False, internal_weights=False)
    edge_index = _edge_index(index_dtype)
    inputs = _inputs(conv, requires_grad=True)
    scale = torch.randn(conv.irreps_out.dim, requires_grad=True)
    results = []
    for fn in (lambda *a: mace_conv(e3nn_tp, *a, edge_index), lambda *a: conv(*a, edge_index)):
        generator = torch.Generator().manual_seed(3)
        out = fn(*inputs)  # [n_nodes, dim_out]
        cotangent = torch.randn(out.shape, generator=generator, dtype=out.dtype) * scale
        grads = torch.autograd.grad((out * cotangent).sum(), inputs, create_graph=True)
        loss = sum((g * torch.randn(g.shape, generator=generator, dtype=g.dtype)).sum() for g in grads)
        second = torch.autograd.grad(loss, (*inputs, scale), allow_unused=True, materialize_grads=True)
        results.append((out, *grads, *second))
    names = ["out", "d/dnode", "d/dedge", "d/dw", "d2/dnode", "d2/dedge", "d2/dw", "d2/dscale"]
    for name, theirs, mine in zip(names, *results):
        assert_close(mine, theirs, name)
    assert torch.all(results[1][0][-1] == 0)  # the node without incoming edges


@pytest.mark.parametrize("name", ["mace-mp-small", "mace-mp-first-layer"])
def test_mace_mp_problems_match_e3nn(name, default_dtype):
    """MACE-MP's interactions at their real size: values and first derivatives."""
    e3nn_tp, conv = _pair(MACE_MP[name], shared_weights=False, internal_weights=False)
    edge_index = _edge_index()
    inputs = _inputs(conv, requires_grad=True)
    out_theirs, out_mine = mace_conv(e3nn_tp, *inputs, edge_index), conv(*inputs, edge_index)
    assert_close(out_mine, out_theirs, "out")
    cotangent = torch.randn_like(out_theirs)
    for name, theirs, mine in zip(["node", "edge", "w"], torch.autograd.grad((out_theirs * cotangent).sum(), inputs),
                                  torch.autograd.grad((out_mine * cotangent).sum(), inputs)):
        assert_close(mine, theirs, "d/d" + name)


@pytest.mark.parametrize("flags", [dict(), dict(shared_weights=True), dict(shared_weights=True, internal_weights=True)],
                         ids=["per-sample", "shared", "internal"])
def test_state_dict_and_weights_as_e3nn(flags, default_dtype):
    problem = PROBLEMS["mixed"]
    e3nn_flags = {**dict(shared_weights=False, internal_weights=False), **flags}  # EquivariantConv's defaults
    e3nn_tp = o3.TensorProduct(*problem, **e3nn_flags)
    conv = EquivariantConv(*problem, **flags)
    assert conv.weight_numel == e3nn_tp.weight_numel and conv.instructions == e3nn_tp.instructions
    assert (conv.shared_weights, conv.internal_weights) == (e3nn_tp.shared_weights, e3nn_tp.internal_weights)
    conv.load_state_dict(e3nn_tp.state_dict(), strict=True)
    for name, value in e3nn_tp.state_dict().items():
        assert torch.equal(conv.state_dict()[name], value), name
    if conv.internal_weights:
        with torch.no_grad():
            conv.weight.copy_(torch.randn_like(conv.weight))
    e3nn_tp.load_state_dict(conv.state_dict(), strict=True)
    for name, value in conv.state_dict().items():
        assert torch.equal(e3nn_tp.state_dict()[name], value), name
    edge_index = _edge_index()
    node_feats, edge_attrs, weights = _inputs(conv, shared=conv.shared_weights)
    weights = None if conv.internal_weights else weights
    assert_close(conv(node_feats, edge_attrs, weights, edge_index),
                 mace_conv(e3nn_tp, node_feats, edge_attrs, weights, edge_index), "out")


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=["int64", "int32"])
def test_deterministic_needs_receiver_sorted_edges(index_dtype, default_dtype):
    e3nn_tp, conv = _pair(PROBLEMS["mace-mp-small-x3"], shared_weights=False, internal_weights=False)
    deterministic = EquivariantConv(*PROBLEMS["mace-mp-small-x3"], deterministic=True)
    edge_index = _edge_index(index_dtype)
    node_feats, edge_attrs, weights = _inputs(conv)
    with pytest.raises(ValueError, match="sorted"):
        deterministic(node_feats, edge_attrs, weights, edge_index)
    order = torch.argsort(edge_index[1], stable=True)
    sorted_args = (node_feats, edge_attrs[order], weights[order], edge_index[:, order])
    out = deterministic(*sorted_args)
    assert_close(out, mace_conv(e3nn_tp, *sorted_args), "deterministic")
    assert torch.equal(out, deterministic(*sorted_args))


def test_sender_perm_does_not_change_the_result(default_dtype):
    conv = EquivariantConv(*PROBLEMS["mixed"])
    edge_index = _edge_index()
    node_feats, edge_attrs, weights = _inputs(conv)
    sender_perm = torch.argsort(edge_index[0], stable=True)
    assert_close(conv(node_feats, edge_attrs, weights, edge_index, sender_perm=sender_perm),
                 conv(node_feats, edge_attrs, weights, edge_index), "sender_perm")


def test_paths_without_weights(default_dtype):
    problem = ("2x0e+2x1o", "0e+1o", "2x0e+2x1o", [(0, 0, 0, "uvu", False), (1, 1, 0, "uvu", False),
                                                  (1, 0, 1, "uvu", False)])
    e3nn_tp, conv = _pair(problem, shared_weights=False, internal_weights=False)
    assert conv.weight_numel == 0
    edge_index = _edge_index()
    node_feats, edge_attrs, weights = _inputs(conv)  # weights [n_edges, 0]
    expected = mace_conv(e3nn_tp, node_feats, edge_attrs, weights, edge_index)
    assert_close(conv(node_feats, edge_attrs, weights, edge_index), expected, "empty weights")
    assert_close(conv(node_feats, edge_attrs, None, edge_index), expected, "no weights")


def test_no_edges_gives_zeros(default_dtype):
    conv = EquivariantConv(*PROBLEMS["mixed"])
    node_feats, edge_attrs, weights = _inputs(conv, n_edges=0)
    out = conv(node_feats, edge_attrs, weights, torch.zeros(2, 0, dtype=torch.int64))
    assert out.shape == (N_NODES, conv.irreps_out.dim) and torch.all(out == 0)


@pytest.mark.parametrize("name", ["mace-mp-small-x3", "mixed"])
def test_equivariant(name, default_dtype):
    conv = EquivariantConv(*PROBLEMS[name])
    edge_index = _edge_index()
    assert_equivariant(lambda x, y, w: conv(x, y, w, edge_index), args_in=list(_inputs(conv)),
                       irreps_in=[conv.irreps_in1, conv.irreps_in2, None], irreps_out=[conv.irreps_out])


def test_bad_inputs_raise_value_errors():
    conv = EquivariantConv(*PROBLEMS["mixed"])
    node_feats, edge_attrs, weights = _inputs(conv)
    edge_index = _edge_index()
    for bad in (edge_index.t(), edge_index[0], edge_index[None], torch.cat([edge_index, edge_index[:1]])):
        with pytest.raises(ValueError, match="edge_index"):
            conv(node_feats, edge_attrs, weights, bad)
    with pytest.raises(ValueError):
        conv(node_feats, edge_attrs, weights, edge_index.float())
    with pytest.raises(ValueError):
        conv(node_feats, edge_attrs, weights, edge_index + N_NODES)  # out of range
    with pytest.raises(ValueError):
        conv(node_feats, edge_attrs[1:], weights, edge_index)
    with pytest.raises(ValueError, match="weights must be given"):
        conv(node_feats, edge_attrs, None, edge_index)
    with pytest.raises(ValueError, match="weights must have shape"):
        conv(node_feats, edge_attrs, weights[:, 1:], edge_index)


def test_loads_a_mace_interaction_blocks_conv_tp(default_dtype):
    """A MACE block's ``conv_tp`` state_dict loads unchanged and the block's message is reproduced."""
    blocks = pytest.importorskip("mace.modules.blocks")
    irreps_tools = pytest.importorskip("mace.modules.irreps_tools")
    scatter = pytest.importorskip("mace.tools.scatter")
    sh, hidden = o3.Irreps.spherical_harmonics(3), o3.Irreps("8x0e+8x1o")
    target = (sh * 8).sort()[0].simplify()
    block = blocks.RealAgnosticResidualInteractionBlock(
        node_attrs_irreps=o3.Irreps("3x0e"), node_feats_irreps=hidden, edge_attrs_irreps=sh,
        edge_feats_irreps=o3.Irreps("4x0e"), target_irreps=target, hidden_irreps=hidden, avg_num_neighbors=3.0,
        radial_MLP=[16])
    irreps_mid, instructions = irreps_tools.tp_out_irreps_with_instructions(hidden, sh, target)
    conv = EquivariantConv(hidden, sh, irreps_mid, instructions)
    conv.load_state_dict(block.conv_tp.state_dict(), strict=True)
    assert conv.instructions == block.conv_tp.instructions and conv.weight_numel == block.conv_tp.weight_numel
    edge_index = _edge_index()
    node_feats = block.linear_up(torch.randn(N_NODES, hidden.dim))  # [n_nodes, 32]
    edge_attrs = o3.spherical_harmonics(sh, torch.randn(N_EDGES, 3), True, "component")  # [n_edges, 16]
    tp_weights = block.conv_tp_weights(torch.randn(N_EDGES, 4))  # [n_edges, weight_numel]
    messages = block.conv_tp(node_feats[edge_index[0]], edge_attrs, tp_weights)  # as in the block's forward
    expected = scatter.scatter_sum(src=messages, index=edge_index[1], dim=0, dim_size=N_NODES)
    assert_close(conv(node_feats, edge_attrs, tp_weights, edge_index), expected, "message")
