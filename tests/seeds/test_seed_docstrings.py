"""The ``>>>`` examples of the seed APIs run and print what they say."""

import doctest

import pytest
import torch

import batmobile_nn.autograd
import batmobile_nn.seeds._oeq_problem
import batmobile_nn.seeds.batmobile
import batmobile_nn.seeds.openequivariance

MODULES = [batmobile_nn.seeds.batmobile, batmobile_nn.seeds._oeq_problem, batmobile_nn.seeds.openequivariance,
           batmobile_nn.autograd]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    torch.manual_seed(0)
    results = doctest.testmod(module, extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS, verbose=False)
    assert results.attempted > 0
    assert results.failed == 0
