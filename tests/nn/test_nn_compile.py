"""``EquivariantConv`` under ``torch.jit.script`` and ``torch.compile(fullgraph=True)`` equals eager."""

import pytest
import torch
from o3_cases import MODE_CASES, MODES, PROBLEMS, check_modes

from batmobile_nn.nn import EquivariantConv


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class _WithGraph(torch.nn.Module):
    """The convolution on a fixed graph, so that every input is differentiable."""

    def __init__(self, conv: EquivariantConv, edge_index: torch.Tensor):
        super().__init__()
        self.conv = conv
        self.register_buffer("edge_index", edge_index)

    def forward(self, node_feats: torch.Tensor, edge_attrs: torch.Tensor, tp_weights: torch.Tensor) -> torch.Tensor:
        return self.conv(node_feats, edge_attrs, tp_weights, self.edge_index)


def _inputs(conv, n_nodes, n_edges, seed):
    generator = torch.Generator().manual_seed(seed)
    dtype = torch.get_default_dtype()
    tensors = [torch.randn(n_nodes, conv.irreps_in1.dim, generator=generator, dtype=dtype),
               torch.randn(n_edges, conv.irreps_in2.dim, generator=generator, dtype=dtype),
               torch.randn(n_edges, conv.weight_numel, generator=generator, dtype=dtype)]
    return [t.requires_grad_() for t in tensors]


@pytest.mark.parametrize("mode, dtype", MODE_CASES)
def test_conv(mode, default_dtype):
    conv = EquivariantConv(*PROBLEMS["mixed"])
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 0, 2], [1, 2, 0, 0, 3, 3, 1]])
    module = _WithGraph(conv, edge_index)
    inputs = _inputs(conv, 5, 7, seed=0)
    # other sizes: more nodes, the same edges (the graph is a buffer)
    check_modes(module, mode, inputs, [inputs[2], inputs[0]], _inputs(conv, 8, 7, seed=1))


@pytest.mark.parametrize("mode", MODES)
def test_conv_graph_as_input(mode):
    """``edge_index`` (int32) as a forward argument, as MACE calls it: two graphs of different sizes."""
    conv = EquivariantConv(*PROBLEMS["mace-mp-small-x3"], shared_weights=True, internal_weights=True)
    compiled = torch.jit.script(conv) if mode == "script" else torch.compile(
        conv, fullgraph=True, backend=mode.split("-", 1)[1])
    for n_nodes, n_edges, seed in [(5, 9, 0), (6, 13, 1)]:
        generator = torch.Generator().manual_seed(seed)
        node_feats, edge_attrs, _ = _inputs(conv, n_nodes, n_edges, seed)
        edge_index = torch.randint(0, n_nodes, (2, n_edges), generator=generator, dtype=torch.int32)
        expected = conv(node_feats, edge_attrs, None, edge_index)
        actual = compiled(node_feats, edge_attrs, None, edge_index)
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
        grads = [torch.autograd.grad(out.sum(), [node_feats, conv.weight]) for out in (actual, expected)]
        for mine, theirs in zip(*grads):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
