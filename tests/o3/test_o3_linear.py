"""``batmobile_nn.o3.Linear`` against e3nn's ``o3.Linear``: values, first and second derivatives in float32 and
float64, the same state_dict and tensors, leading batch dimensions, what the backward keeps, TorchScript and
torch.compile, and the modules it refuses."""

import pytest
import torch
from e3nn import o3

from batmobile_nn.o3 import Linear
from ops._compare import compare_with_e3nn, randn

IRREPS = [("128x0e+128x1o+128x2e+128x3o", "128x0e+128x1o+128x2e+128x3o"), ("8x0e", "1x0e"),
          ("3x0e+2x1o+2x0e+1x2e+4x3o", "5x0e+3x1o+2x3o+1x2o")]  # the last: two inputs into 0e, an output no path reaches


@pytest.mark.parametrize("irreps", IRREPS, ids=str)
def test_matches_e3nn(irreps, dtype):
    torch.manual_seed(0)
    stock = o3.Linear(*irreps).double()
    stock32 = o3.Linear(*irreps)
    stock32.load_state_dict(stock.state_dict())
    ours = Linear.from_e3nn(o3.Linear(*irreps).to(dtype))
    (x,) = randn([(6, stock.irreps_in.dim)], torch.float64, 1)

    def with_weight(module):
        def fn(x, weight):
            return torch.func.functional_call(module, {"weight": weight}, (x,))
        return fn

    compare_with_e3nn(with_weight(ours), with_weight(stock32), with_weight(stock), [x, stock.weight.detach()], dtype,
                      "Linear")


def test_same_state_dict_tensors_and_batch_dimensions():
    stock = o3.Linear("4x0e+2x1o", "3x0e+2x1o+1x2e", path_normalization="path")
    ours = Linear.from_e3nn(stock)
    assert ours.state_dict().keys() == stock.state_dict().keys() and ours.weight is stock.weight
    assert ours.instructions == stock.instructions and ours.weight_numel == stock.weight_numel
    x = torch.randn(2, 3, 10)
    torch.testing.assert_close(ours(x), stock(x))
    built = Linear("4x0e+2x1o", "3x0e+2x1o+1x2e", path_normalization="path")  # e3nn's constructor arguments
    built.load_state_dict(stock.state_dict())
    torch.testing.assert_close(built(x), stock(x))


def test_backward_keeps_only_the_input():
    """e3nn keeps a transposed copy of the input per block for the weight gradient; ours keeps the input."""
    ours = Linear("16x0e+16x1o+16x2e", "16x0e+16x1o+16x2e")
    x = torch.randn(50, ours.irreps_in.dim, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ours(x).sum().backward()
    own = {x.untyped_storage().data_ptr(), ours.weight.untyped_storage().data_ptr()}
    assert saved and all(t.untyped_storage().data_ptr() in own for t in saved)


def test_script_and_compile():
    ours = Linear("8x0e+8x1o", "8x0e+4x1o")
    x = torch.randn(10, 32)
    expected = ours(x)
    assert torch.equal(torch.jit.script(ours)(x), expected)
    torch.testing.assert_close(torch.compile(ours, fullgraph=True)(x), expected)


def test_bad_input_and_refused_modules():
    ours = Linear("4x0e", "4x0e")
    with pytest.raises(ValueError, match=r"features must have last dimension 4"):
        ours(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="it has biases"):
        Linear("4x0e", "4x0e", biases=True)
    with pytest.raises(ValueError, match="not internal and shared"):
        Linear("4x0e", "4x0e", shared_weights=False)
    with pytest.raises(ValueError, match="f_in / f_out"):
        Linear("4x0e", "4x0e", f_in=2, f_out=3)


def test_no_output_irreps_and_autocast():
    ours = Linear("4x0e+2x1o", "0x0e")
    assert ours(torch.randn(3, 10)).shape == (3, 0)
    ours = Linear("4x0e+2x1o", "3x0e+1x1o")
    x = torch.randn(3, 10, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x)
    out.square().sum().backward()  # e3nn's Linear runs under autocast too
    assert out.dtype == torch.float32 and x.grad is not None
