"""Eager calls of the ops without the custom-op layers around them.

A ``torch.library.custom_op`` call goes through the dispatcher's Python layers (argument conversion,
the autograd wrapper, a redispatch, output alias checks) before it reaches our implementation: on the
CPU of this project's VM, 270 µs per call of the convolution with MACE-MP-medium's plan (its lists of
125 ints and 402 floats are converted at every crossing) against 43 µs for a ``torch.autograd.Function``
running the same checks and implementation (a dummy kernel, so this is the host's cost alone). A MACE training step makes 26 such calls and is host-bound
at 1,000 atoms, so eager calls take the Function. Under ``torch.compile``, ``torch.jit.trace`` and other
tracing the op itself is called (it has the fake implementation the compiler needs), and so for meta
tensors, tensor subclasses and fx proxies; TorchScript compiles a call of these functions as the op.
Both paths run the same implementation, ``setup_context`` and backward (one autograd chain); the
backward calls the fast paths or the ops as its forward did (``pick``).
"""

import functools
import inspect
from typing import Callable, List, Optional

import torch
from torch._functorch.utils import unwrap_dead_wrappers  # what Function.apply calls first
from torch.autograd import forward_ad

_TRACING_MODES = tuple(getattr(torch._C._TorchDispatchModeKey, name)
                       for name in ("FAKE", "PROXY", "FUNCTIONAL"))  # private API, guarded by tests/ops/test_opcheck.py


def _tracing() -> bool:
    """Under torch.compile or torch.jit.trace, or inside a fake / proxy / functional tracing mode (AOT autograd,
    make_fx, export): places where only the registered op (with its fake implementation) may run."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or (torch._C._len_torch_dispatch_stack() > 0  # no mode at all: the common case, one call
                and any(torch._C._get_dispatch_mode(key) is not None for key in _TRACING_MODES)))


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
OP, FUNCTION, BARE = "op", "function", "bare"  # where an eager call goes (``route``)


def _requires_grad(args) -> Optional[bool]:
    """One pass over the arguments (lists of tensors included): None when one is a tensor subclass, an fx Proxy or
    a meta tensor (which the op's fake implementation serves), else whether one requires grad."""
    requires = False
    for arg in args:
        kind = type(arg)
        if kind in _PLAIN_TENSORS:  # the common case first: exact types, no isinstance walk
            if arg.is_meta:
                return None
            requires = requires or arg.requires_grad
        elif kind is list or kind is tuple:  # a schema's lists hold one type: look inside lists of tensors only
            if arg and isinstance(arg[0], (torch.Tensor, torch.fx.Proxy)):
                inner = _requires_grad(arg)
                if inner is None:
                    return None
                requires = requires or inner
        elif isinstance(arg, (torch.Tensor, torch.fx.Proxy)):  # a tensor subclass or an fx proxy
            return None
    return requires


def route(args) -> str:
    """``OP`` for arguments only the registered op serves; ``FUNCTION`` when autograd would record the call (grad
    mode on and an argument requiring grad, or a forward-mode AD level open: dual tensors then meet the Function,
    which refuses them rather than drop their tangents); else ``BARE``: the implementation alone (an
    autograd.Function's apply costs microseconds even when it records nothing)."""
    requires = _requires_grad(args)
    if requires is None:
        return OP
    if (requires and torch.is_grad_enabled()) or getattr(forward_ad, "_current_level", 0) >= 0:  # private: -1
        return FUNCTION  # outside ``forward_ad.dual_level()``
    return BARE


_will_execute = getattr(torch._C, "_will_engine_execute_node", None)  # private API (torch.utils.checkpoint's)


def needs(ctx) -> List[bool]:
    """``ctx.needs_input_grad``, less the inputs whose gradient this backward pass does not use.

    ``needs_input_grad`` says which inputs require grad; ``torch.autograd.grad(energy, positions)`` (forces)
    uses none of the parameters' gradients, and autograd's own formulas skip them, so an eager backward
    asks the engine whether the node an input's gradient goes to will run. Outside the engine (the op's
    registered autograd under tracing) it is ``needs_input_grad``."""
    flags = list(ctx.needs_input_grad)
    tensor_args = getattr(ctx, "tensor_args", None)  # which forward arguments were tensors (set in eager calls)
    if (tensor_args is None or _will_execute is None or len(tensor_args) != len(flags)
            or torch.compiler.is_compiling()):  # compiled autograd traces the backward: dynamo cannot trace the query
        return flags
    edge = 0  # next_functions has one entry per tensor argument
    for i, is_tensor in enumerate(tensor_args):
        if is_tensor:
            if flags[i] and edge < len(ctx.next_functions):
                node = ctx.next_functions[edge][0]
                try:
                    flags[i] = node is not None and bool(_will_execute(node))
                except RuntimeError:  # a leaf under autograd.grad, which the engine cannot answer for: keep it
                    pass
            edge += 1
    return flags


def pick(ctx, call: Callable) -> Callable:
    """In a backward: ``call`` (a ``fast_path`` function) when the forward ran eagerly through it, else its op
    (the op's registered autograd runs under tracing, where only ops may be called)."""
    return call if getattr(ctx, "eager", False) else call.op


def fast_path(op, impl: Callable, setup_context: Optional[Callable] = None,
              backward: Optional[Callable] = None) -> Callable:
    """Registers ``setup_context`` and ``backward`` as ``op``'s autograd (``op`` is the custom op made of
    ``impl``) and returns a function with ``impl``'s signature that calls ``op`` under tracing, and otherwise
    an autograd.Function with ``impl`` as its forward and the same ``setup_context`` and ``backward`` (for an
    op without a derivative, a backward that raises)."""
    signature = inspect.signature(impl)
    name = impl.__name__.lstrip("_")
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)
    else:  # an op without a derivative: differentiating it is an error, as for the op
        def setup_context(ctx, inputs, output):
            pass

        def backward(ctx, *grads):
            raise RuntimeError(f"batmobile::{name} has no derivative of its own (a backward that builds a graph "
                               "composes differentiable ops where the op supports higher derivatives)")

    def forward(ctx, *args):  # one forward with ctx: a separate setup_context costs a signature bind per call
        output = impl(*args)
        setup_context(ctx, args, output)
        ctx.eager = True  # the backward then calls the fast paths too (``pick``)
        ctx.tensor_args = [isinstance(a, torch.Tensor) for a in args]  # for ``needs``
        return output

    def eager_backward(ctx, *grads):
        # a custom op's backward gives a list of Nones for a list-of-tensors input (u of the symmetric
        # contraction); an autograd.Function takes None there
        return tuple(None if isinstance(g, list) and not any(x is not None for x in g) else g
                     for g in backward(ctx, *grads))

    function = type(f"{impl.__name__}_function", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(eager_backward)})

    c_apply = super(torch.autograd.Function, function).apply  # the C++ apply (torch._C._FunctionBase)

    @functools.wraps(impl)
    def call(*args, **kwargs):
        if kwargs:  # autograd.Function.apply takes positional arguments only
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            args = bound.args
        if _tracing() or torch._C._are_functorch_transforms_active():  # vmap, grad, ...: the op
            return op(*args)
        where = route(args)
        if where != FUNCTION:
            return op(*args) if where == OP else impl(*args)
        # what Function.apply does without transforms, less its Python layers (3.5 us a call on this VM)
        return c_apply(*unwrap_dead_wrappers(args))

    call.op = op  # the registered op (torch.ops.batmobile.<name>), for opcheck and torch.compile
    try:  # TorchScript compiles a call of this function as the op (private API: without it, scripting fails)
        torch.jit._builtins._register_builtin(call, getattr(op, "_qualname", f"batmobile::{name}"))
    except AttributeError:
        pass
    return call
