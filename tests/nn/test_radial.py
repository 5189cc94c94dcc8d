"""``FullyConnectedNet`` (MACE's radial MLP) against e3nn's ``nn.FullyConnectedNet`` with SiLU: values, first and
second derivatives in float32 and float64, the normalization options, the same state_dict and layers,
TorchScript, and the networks it refuses."""

import pytest
import torch
from e3nn import nn as e3nn_nn

from batmobile_nn.nn import FullyConnectedNet
from ops._compare import compare_with_e3nn, randn

OPTIONS = [dict(), dict(out_act=True), dict(variance_in=2.0, variance_out=3.0)]


@pytest.mark.parametrize("options", OPTIONS, ids=str)
def test_matches_e3nn(options, dtype):
    torch.manual_seed(0)
    hs = [8, 16, 16, 40]
    stock = e3nn_nn.FullyConnectedNet(hs, torch.nn.functional.silu, **options).double()
    stock32 = e3nn_nn.FullyConnectedNet(hs, torch.nn.functional.silu, **options)
    stock32.load_state_dict(stock.state_dict())
    ours_stock = e3nn_nn.FullyConnectedNet(hs, torch.nn.functional.silu, **options).to(dtype)
    ours = FullyConnectedNet.from_e3nn(ours_stock)
    names = [name for name, _ in stock.named_parameters()]
    (x,) = randn([(7, 8)], torch.float64, 1)

    def with_weights(module):
        def fn(x, *weights):
            return torch.func.functional_call(module, dict(zip(names, weights)), (x,))
        return fn

    compare_with_e3nn(with_weights(ours), with_weights(stock32), with_weights(stock),
                      [x] + [p.detach() for p in stock.parameters()], dtype, "FullyConnectedNet")


def test_same_layers_state_dict_batch_dimensions_and_script():
    stock = e3nn_nn.FullyConnectedNet([8, 64, 64, 64, 1280], torch.nn.functional.silu)
    ours = FullyConnectedNet.from_e3nn(stock)
    assert ours.state_dict().keys() == stock.state_dict().keys()
    assert [a is b for a, b in zip(ours.parameters(), stock.parameters())] == [True] * 4
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ours(x), stock(x))
    assert torch.equal(torch.jit.script(ours)(x), ours(x))
    built = FullyConnectedNet([8, 64, 64, 64, 1280])  # e3nn's constructor, SiLU
    built.load_state_dict(stock.state_dict())
    torch.testing.assert_close(built(x), stock(x))


def test_refuses_other_activations():
    with pytest.raises(ValueError, match="not e3nn's normalized SiLU"):
        FullyConnectedNet.from_e3nn(e3nn_nn.FullyConnectedNet([4, 8, 2], torch.tanh))
    with pytest.raises(ValueError, match="not an e3nn FullyConnectedNet"):
        FullyConnectedNet.from_e3nn(torch.nn.Linear(4, 2))


def test_constructor_takes_e3nns_positional_arguments():
    torch.manual_seed(0)
    stock = e3nn_nn.FullyConnectedNet([8, 16, 4], torch.nn.functional.silu, 2.0, 3.0, True)
    ours = FullyConnectedNet([8, 16, 4], torch.nn.functional.silu, 2.0, 3.0, True)
    ours.load_state_dict(stock.state_dict())
    x = torch.randn(5, 8)
    torch.testing.assert_close(ours(x), stock(x))
    with pytest.raises(ValueError, match="must be torch.nn.functional.silu"):
        FullyConnectedNet([8, 16, 4], torch.tanh)
