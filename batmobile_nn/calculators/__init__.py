"""ASE calculators on batmobile_nn-patched models (``MACECalculator``; imports mace on first use).

>>> from batmobile_nn.calculators import MACECalculator
>>> atoms.calc = MACECalculator(model_paths="model.model", device="cuda", default_dtype="float64")  # doctest: +SKIP
"""

__all__ = ["MACECalculator"]


def __getattr__(name):
    if name == "MACECalculator":
        from .mace import MACECalculator

        return MACECalculator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
