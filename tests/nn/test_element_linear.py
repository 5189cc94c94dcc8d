"""``ElementLinear`` against e3nn's ``FullyConnectedTensorProduct`` with one-hot attributes (MACE's skip_tp):
values, first and second derivatives in float32 and float64, the same state_dict, int element indices,
TorchScript and torch.compile, and the tensor products it refuses."""

import pytest
import torch
from e3nn import o3

from batmobile_nn.nn import ElementLinear
from ops._compare import compare_with_e3nn, randn

IRREPS = [("128x0e", "16x0e+8x1o"), ("8x0e+8x1o", "8x0e+8x1o"), ("3x0e+2x1o+2x0e+1x2e+4x3o", "5x0e+3x1o+2x3o+1x2o")]


def _pair(irreps_in, irreps_out, n_elements, dtype):
    torch.manual_seed(0)
    stock = o3.FullyConnectedTensorProduct(irreps_in, f"{n_elements}x0e", irreps_out).to(dtype)
    return stock, ElementLinear.from_e3nn(stock)


@pytest.mark.parametrize("irreps", IRREPS, ids=str)
def test_matches_e3nn(irreps, dtype):
    stock, ours = _pair(*irreps, 5, torch.float64)
    stock32 = o3.FullyConnectedTensorProduct(irreps[0], "5x0e", irreps[1])
    stock32.load_state_dict(stock.state_dict())
    element = torch.tensor([0, 3, 3, 1, 0, 2, 3])  # element 4 absent
    attrs = torch.nn.functional.one_hot(element, 5).double()
    (x,) = randn([(7, stock.irreps_in1.dim)], torch.float64, 1)

    def with_weight(module):
        def fn(x, weight):
            return torch.func.functional_call(module, {"weight": weight}, (x, attrs.to(x.dtype)))
        return fn

    compare_with_e3nn(with_weight(ours.to(dtype)), with_weight(stock32), with_weight(stock), [x, stock.weight.detach()],
                      dtype, "ElementLinear")


def test_same_state_dict_and_int_elements():
    stock, ours = _pair("4x0e+2x1o", "3x0e+2x1o", 3, torch.float32)
    assert ours.state_dict().keys() == stock.state_dict().keys()
    assert ours.weight is stock.weight
    element = torch.tensor([2, 0, 1, 1])
    x = torch.randn(4, stock.irreps_in1.dim)
    assert torch.equal(ours(x, element), ours(x, torch.nn.functional.one_hot(element, 3).float()))


def test_script_and_compile():
    ours = ElementLinear("8x0e+8x1o", "8x0e+4x1o", 5)
    x = torch.randn(10, 32)
    attrs = torch.nn.functional.one_hot(torch.randint(0, 5, (10,)), 5).float()
    expected = ours(x, attrs)
    assert torch.equal(torch.jit.script(ours)(x, attrs), expected)
    torch.testing.assert_close(torch.compile(ours, fullgraph=True)(x, attrs), expected)


def test_bad_inputs_and_refused_products():
    ours = ElementLinear("4x0e", "4x0e", 3)
    with pytest.raises(ValueError, match=r"x must have shape \[n_nodes, 4\]"):
        ours(torch.zeros(2, 5), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"num_elements=3\], got \[2, 4\]"):
        ours(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="not one block of scalars"):
        ElementLinear.from_e3nn(o3.FullyConnectedTensorProduct("4x0e", "3x0e+1x1o", "4x0e"))
    with pytest.raises(ValueError, match="has a 'uvu' path"):
        ElementLinear.from_e3nn(o3.TensorProduct("4x0e", "3x0e", "4x0e", [(0, 0, 0, "uvu", True)]))
    with pytest.raises(ValueError, match="not internal and shared"):
        ElementLinear.from_e3nn(o3.FullyConnectedTensorProduct("4x0e", "3x0e", "4x0e", shared_weights=False))


def test_element_index_once_per_node_attrs():
    """The skip connections and product blocks of a step share one element tensor (it keys the kernels' caches)."""
    from batmobile_nn.nn._elements import element_index

    attrs = torch.nn.functional.one_hot(torch.tensor([2, 0, 1]), 3).float()
    first = element_index(attrs)
    assert element_index(attrs) is first and torch.equal(first, torch.tensor([2, 0, 1]))
    attrs[0] = torch.tensor([1.0, 0.0, 0.0])  # in place: a new version, a new index
    assert torch.equal(element_index(attrs), torch.tensor([0, 0, 1]))


def test_element_index_of_a_new_tensor_on_reused_memory():
    from batmobile_nn.nn._elements import element_index

    values = torch.nn.functional.one_hot(torch.tensor([2, 0, 1]), 3).float().numpy()
    assert element_index(torch.from_numpy(values)).tolist() == [2, 0, 1]
    values[0] = [0.0, 1.0, 0.0]  # written behind torch's back: no version bump
    assert element_index(torch.from_numpy(values)).tolist() == [1, 0, 1]
