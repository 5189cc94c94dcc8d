"""The ``>>>`` examples in the o3 modules' docstrings run and print what they say."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["batmobile_nn.o3._spherical_harmonics", "batmobile_nn.o3._tensor_product"])
def test_docstring_examples(module):
    results = doctest.testmod(importlib.import_module(module), verbose=False, report=True)
    assert results.attempted > 0, f"{module} has no examples"
    assert results.failed == 0
