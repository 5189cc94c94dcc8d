"""The extension's ops (``torch.ops.batmobile_cuda``, ``csrc/``) as the functions the dispatcher enters.

Calling ``torch.ops.batmobile_cuda.<name>(...)`` goes through the op packet's Python ``__call__`` (and an attribute
lookup per call) before it reaches the same C++ entry point: about 1.2 of 4.2 us for a small op on this
project's VM, on every kernel launch. ``ops.<name>`` is that entry point (the default overload's ``_op``, a private
attribute; the packet where it is absent), looked up once. The ops must be registered (``_cuda.load``) before the
first access of a name.
"""

import torch


class Ops:
    def __init__(self, namespace: str):
        self._namespace = namespace

    def __getattr__(self, name: str):
        if name.startswith("_"):  # copy and pickle look these up on an instance without _namespace
            raise AttributeError(name)
        packet = getattr(getattr(torch.ops, self._namespace), name)  # AttributeError while not registered
        function = getattr(getattr(packet, "default", None), "_op", None) or packet
        self.__dict__[name] = function  # cached: __getattr__ runs once per name
        return function


ops = Ops("batmobile_cuda")
