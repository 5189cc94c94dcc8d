"""The ``>>>`` examples in the nn modules' docstrings run and print what they say."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["batmobile_nn.nn._conv"])
def test_docstring_examples(module):
    results = doctest.testmod(importlib.import_module(module), verbose=False, report=True)
    assert results.attempted > 0, f"{module} has no examples"
    assert results.failed == 0
