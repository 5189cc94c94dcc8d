"""cuEquivariance (0.13) and OpenEquivariance (0.7) baselines for scripts/bench_ops.py.

Each builder takes the e3nn reference of a case (module, inputs, weights) and returns a :class:`Baseline` that computes
exactly the same function: same irreps, instructions, normalisation, dtype and weight *values*. Where a library stores
data differently from e3nn (mul_ir features, e3nn's instruction-ordered weights), the inputs are converted once,
outside the timed call, the way a model running natively on that library keeps them; ``to_e3nn`` converts the output
back for the parity check only (see ``Relayout``). A builder raises :class:`Unavailable` when a library cannot run the
case; a library that is not importable is reported as absent by :class:`Libraries`, never as an error.

Layouts, per library:
* cuEquivariance: its kernels want ir_mul features. The MACE convolution is built the way mace-torch 0.3.16 builds it
  with ``conv_fusion`` (mace/modules/wrapper_ops.py, ``TensorProduct`` + ``with_cueq_conv_fusion``): the
  ``channelwise_tensor_product`` descriptor in mace's e3nn-compatible O3 group, flattened and squeezed, run by
  ``cuet.SegmentedPolynomial(method="uniform_1d")`` with the gather of x[sender] and the scatter-sum to receiver fused
  (``input_indices={1: sender}``, ``output_indices={0: receiver}``). That descriptor sorts its output irreps (and the
  per-path weights with them), so the weights are reordered from e3nn's instruction order and the output reordered back.
  The seed tensor product (uvw, shared weights) is a custom ``SegmentedTensorProduct`` holding e3nn's own coefficients
  (wigner_3j times e3nn's path weight) in e3nn's instruction order, so its weights need no reordering; it runs with
  ``method="fused_tp"`` (what ``cuet.FullyConnectedTensorProduct`` uses; ``uniform_1d`` cannot do 2-D uvw weights).
* OpenEquivariance: mul_ir like e3nn; ``oeq.TPProblem`` takes e3nn's instructions and normalisation. Its kernels use
  their own weight order, so the weights go through ``reorder_weights_from_e3nn`` (outside the timed call), after
  negating the paths whose Clebsch-Gordan sign differs from e3nn 0.4.4's (see ``_oeq_weights``).
  ``TensorProductConv.forward(X, Y, W, rows, cols)`` computes out[rows] += TP(X[cols], Y, W) (see its E3NNConv
  reference), i.e. rows = receiver, cols = sender, as mace's ``with_oeq_conv_fusion`` passes them; atomic
  (``deterministic=False``) as mace uses it.
"""

import dataclasses
import itertools
from typing import Callable, List, Optional

import torch

LIBS = ("cueq", "oeq")


class Unavailable(Exception):
    """A baseline that cannot run this case (the message says why)."""


@dataclasses.dataclass
class Baseline:
    fn: Callable[[], torch.Tensor]  # one call, output in the library's layout
    inputs: List[torch.Tensor]  # the leaves to differentiate, in the order of the e3nn call (x, y, w)
    grad_out: Optional[torch.Tensor]  # the e3nn grad_out in the library's layout
    to_e3nn: Callable[[torch.Tensor], torch.Tensor]  # output back to e3nn's layout (parity check only)
    note: str = ""


def parity_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """max |out - reference| over max |reference|: a relative error that does not blow up on near-zero entries."""
    out, reference = out.detach().double(), reference.detach().double()
    return ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-300)).item()


PARITY_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}


class Relayout:
    """Converts a [batch, dim] tensor between e3nn's layout (mul_ir, segments in e3nn order) and a library's
    (segments in ``order``: position p holds e3nn segment order[p]; ir_mul inside a segment when ``ir_mul``)."""

    def __init__(self, segments, order=None, ir_mul=True):
        self.segments = [(int(mul), int(dim)) for mul, dim in segments]  # (mul, ir dim) in e3nn order
        self.order = list(range(len(self.segments))) if order is None else list(order)
        assert sorted(self.order) == list(range(len(self.segments)))
        self.ir_mul = ir_mul

    def from_e3nn(self, t):
        pieces = t.split([m * d for m, d in self.segments], dim=-1)
        return torch.cat([self._t(pieces[k], *self.segments[k]) for k in self.order], dim=-1)

    def to_e3nn(self, t):
        pieces = t.split([self.segments[k][0] * self.segments[k][1] for k in self.order], dim=-1)
        back = [None] * len(self.segments)
        for piece, k in zip(pieces, self.order):
            mul, dim = self.segments[k]
            back[k] = self._t(piece, dim, mul)  # ir_mul (dim, mul) -> mul_ir (mul, dim)
        return torch.cat(back, dim=-1)

    def _t(self, piece, a, b):  # [.., a*b] viewed as (a, b) -> (b, a)
        if not self.ir_mul or a == 1 or b == 1:
            return piece
        return piece.reshape(*piece.shape[:-1], a, b).transpose(-1, -2).reshape(piece.shape)


def _segments(irreps):
    return [(mul, ir.dim) for mul, ir in irreps]


def _leaf(t, like=None):
    """A fresh leaf holding ``t``'s values, requiring grad as ``like`` (default ``t``) does."""
    return t.detach().clone().requires_grad_((t if like is None else like).requires_grad)


class Libraries:
    """Which baseline libraries this run can use. On the CPU they are skipped (their kernels need CUDA), unless
    ``cpu_naive``: then cuEquivariance runs its pure-PyTorch ``naive`` method, to check construction and parity (its
    times are not cuEquivariance's kernels)."""

    def __init__(self, device, cpu_naive=False):
        self.device, self.cpu_naive = device, cpu_naive
        self.status = {}  # lib -> None when usable, else why not
        self.versions = {}
        cuda = device.type == "cuda"
        if not cuda and not cpu_naive:
            self.status = {lib: "skipped: needs CUDA (CPU run)" for lib in LIBS}
            return
        try:
            import cuequivariance as cue
            import cuequivariance_torch as cuet
            from cuequivariance_torch.primitives.segmented_polynomial import HAS_CUE_OPS

            self.cue, self.cuet = cue, cuet
            self.versions["cueq"] = cuet.__version__
            if cuda and not HAS_CUE_OPS:  # cuet would fall back to its naive PyTorch method silently
                self.status["cueq"] = "absent: cuequivariance_ops_torch (the CUDA kernels) is not importable"
            else:
                self.status["cueq"] = None
        except Exception as exc:  # ImportError, or a broken install
            self.status["cueq"] = f"absent: {type(exc).__name__}: {exc}"
        if not cuda:
            self.status["oeq"] = "skipped: needs CUDA (CPU run)"
            return
        try:
            import openequivariance as oeq

            self.oeq = oeq
            self.versions["oeq"] = getattr(oeq, "__version__", None)
            # the import succeeds even when its JIT extension failed to build; then every kernel call fails
            built = getattr(oeq, "BUILT_EXTENSION", True)
            error = str(getattr(oeq, "BUILT_EXTENSION_ERROR", "") or "").strip().splitlines()
            self.status["oeq"] = None if built else f"absent: extension not built: {(error or ['?'])[-1][:300]}"
        except Exception as exc:
            self.status["oeq"] = f"absent: {type(exc).__name__}: {exc}"

    def cueq_method(self, method):
        return method if self.device.type == "cuda" else "naive"

    def build(self, builders, *args):
        """{lib: Baseline or the reason there is none} for ``builders`` = {lib: builder(libs, *args)}."""
        out = {}
        for lib in LIBS:
            if self.status.get(lib):
                out[lib] = self.status[lib]
            elif builders.get(lib) is None:
                out[lib] = "n/a: no such operation in this library"
            else:
                try:
                    out[lib] = builders[lib](self, *args)
                except Unavailable as exc:
                    out[lib] = f"n/a: {exc}"
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    out[lib] = "oom while building"
                except Exception as exc:  # an API mismatch must not end the run: it is recorded in the row
                    out[lib] = f"error while building: {type(exc).__name__}: {exc}"
        return out

    def _cueq_module(self, polynomial, method, dtype):
        m = self.cuet.SegmentedPolynomial(polynomial, method=self.cueq_method(method), math_dtype=dtype)
        if m.method != self.cueq_method(method):  # cuet falls back to "naive" with only a warning
            raise RuntimeError(f"cuet.SegmentedPolynomial fell back to method {m.method!r} instead of {method!r}")
        return m.to(self.device)


# ---- cuEquivariance -------------------------------------------------------------------------------------
def o3_e3nn():
    """mace-torch's ``O3_e3nn`` group (cue.O3 with e3nn's coefficients and irrep order): what mace's cuEquivariance
    path runs. Its coefficients come in the default dtype, so callers build descriptors under the benchmark's."""
    try:
        from mace.tools.cg import O3_e3nn
    except ImportError as exc:
        raise Unavailable(f"mace-torch is needed for its O3_e3nn group ({exc})") from exc
    return O3_e3nn


def cueq_sh(libs, vectors, ls):
    """cuet.SphericalHarmonics(normalize=True): e3nn's component normalisation and basis (checked by parity)."""
    m = libs.cuet.SphericalHarmonics(list(ls), normalize=True, math_dtype=vectors.dtype,
                                     method=libs.cueq_method("uniform_1d")).to(libs.device)
    if m.f.method != libs.cueq_method("uniform_1d"):
        raise RuntimeError(f"cuet.SphericalHarmonics fell back to method {m.f.method!r}")
    return Baseline(lambda: m(vectors), [vectors], None, lambda out: out, f"method={m.f.method}")


def cueq_tp(libs, e3nn_tp, x, y, w, g):
    """The seed's uvw tensor product with shared weights: a SegmentedTensorProduct with e3nn's coefficients."""
    import numpy as np
    from e3nn import o3

    cue = libs.cue
    if not e3nn_tp.shared_weights or any(i.connection_mode != "uvw" or not i.has_weight for i in e3nn_tp.instructions):
        raise Unavailable("only weighted uvw instructions with shared weights are mapped")
    d = cue.SegmentedTensorProduct.from_subscripts("uvw,iu,jv,kw+ijk")  # ir_mul operands, as cuEq's own descriptors
    for operand, irreps in ((1, e3nn_tp.irreps_in1), (2, e3nn_tp.irreps_in2), (3, e3nn_tp.irreps_out)):
        for mul, ir in irreps:
            d.add_segment(operand, (ir.dim, mul))
    for ins in e3nn_tp.instructions:  # weight segments in e3nn's instruction order, each (u, v, w) like e3nn's
        l1, l2, l3 = (e3nn_tp.irreps_in1[ins.i_in1].ir.l, e3nn_tp.irreps_in2[ins.i_in2].ir.l,
                      e3nn_tp.irreps_out[ins.i_out].ir.l)
        coefficients = o3.wigner_3j(l1, l2, l3, dtype=torch.float64).numpy() * ins.path_weight
        d.add_path(tuple(ins.path_shape), ins.i_in1, ins.i_in2, ins.i_out, c=np.ascontiguousarray(coefficients))
    assert d.operands[0].size == e3nn_tp.weight_numel
    m = libs._cueq_module(cue.SegmentedPolynomial.eval_last_operand(d), "fused_tp", x.dtype)
    x_layout, out_layout = Relayout(_segments(e3nn_tp.irreps_in1)), Relayout(_segments(e3nn_tp.irreps_out))
    y_layout = Relayout(_segments(e3nn_tp.irreps_in2))
    xc, yc = _leaf(x_layout.from_e3nn(x)), _leaf(y_layout.from_e3nn(y))
    wc = _leaf(w.reshape(1, -1))  # shared weights: batch 1 (same values, same order)
    return Baseline(lambda: m([wc, xc, yc])[0], [xc, yc, wc], out_layout.from_e3nn(g), out_layout.to_e3nn,
                    f"method={m.method}, custom uvw descriptor, ir_mul inputs (transposed outside the timing)")


def cueq_conv(libs, e3nn_tp, x, y, w, g, sender, receiver):
    """The MACE convolution as mace-torch 0.3.16 runs it with cuEquivariance and conv_fusion."""
    cue = libs.cue
    G = o3_e3nn()
    ins = e3nn_tp.instructions
    if any(i.connection_mode != "uvu" or not i.has_weight for i in ins) or [i.i_out for i in ins] != list(
            range(len(e3nn_tp.irreps_out))):
        raise Unavailable("only weighted uvu instructions with one instruction per output segment are mapped")
    irreps1, irreps2 = cue.Irreps(G, str(e3nn_tp.irreps_in1)), cue.Irreps(G, str(e3nn_tp.irreps_in2))
    filter_out = cue.Irreps(G, str(e3nn_tp.irreps_out))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(x.dtype)  # mace builds a float64 model's descriptors under float64
    try:
        e = cue.descriptors.channelwise_tensor_product(irreps1, irreps2, filter_out)
    finally:
        torch.set_default_dtype(previous)
    m = libs._cueq_module(e.flatten_coefficient_modes().squeeze_modes().polynomial, "uniform_1d", x.dtype)

    # The descriptor's paths, in the order _channelwise_tensor_product_core adds them, then sorted by output irrep
    # (stable), as it does: position p of cuEq's output (and of its weights) holds e3nn instruction order[p].
    from cuequivariance.group_theory.irreps_array.irrep_utils import into_list_of_irrep

    keep = into_list_of_irrep(G, filter_out)
    paths = [(i1, i2, ir3) for (i1, (_, ir1)), (i2, (_, ir2)) in itertools.product(enumerate(irreps1),
                                                                                   enumerate(irreps2))
             for ir3 in ir1 * ir2 if ir3 in keep for _ in cue.clebsch_gordan(ir1, ir2, ir3)]
    paths = [paths[n] for n in sorted(range(len(paths)), key=lambda n: (paths[n][2], n))]
    irreps_out = e3nn_tp.irreps_out
    e3nn_index = {(i.i_in1, i.i_in2, irreps_out[i.i_out].ir.l, irreps_out[i.i_out].ir.p): k for k, i in enumerate(ins)}
    order = [e3nn_index[(i1, i2, ir3.l, ir3.p)] for i1, i2, ir3 in paths]
    assert sorted(order) == list(range(len(ins))), "cuEq's channel-wise paths differ from e3nn's instructions"
    got = [(mul, ir.l, ir.p) for mul, ir in e.outputs[0].irreps]
    assert got == [(irreps_out[k].mul, irreps_out[k].ir.l, irreps_out[k].ir.p) for k in order], got

    weight_layout = Relayout([(torch.Size(i.path_shape).numel(), 1) for i in ins], order, ir_mul=False)
    out_layout = Relayout(_segments(irreps_out), order)  # output segment k is instruction k's (checked above)
    x_layout, y_layout = Relayout(_segments(e3nn_tp.irreps_in1)), Relayout(_segments(e3nn_tp.irreps_in2))
    xc, yc, wc = _leaf(x_layout.from_e3nn(x)), _leaf(y_layout.from_e3nn(y)), _leaf(weight_layout.from_e3nn(w))

    def fn():  # mace's with_cueq_conv_fusion forward
        return m([wc, xc, yc], {1: sender}, {0: xc}, {0: receiver})[0]

    return Baseline(fn, [xc, yc, wc], out_layout.from_e3nn(g), out_layout.to_e3nn,
                    f"method={m.method}, mace conv_fusion (channelwise_tensor_product, O3_e3nn), ir_mul features, "
                    "weights and output reordered to the descriptor's sorted irreps (outside the timing)")


# ---- OpenEquivariance -----------------------------------------------------------------------------------
def _oeq_problem(libs, e3nn_tp, dtype):
    oeq = libs.oeq
    instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in e3nn_tp.instructions]
    # e3nn's Instruction.path_weight is its normalisation coefficient: pass the 5-tuples the e3nn module was built from
    # (path weight 1) so that oeq derives the same normalisation (component / element, e3nn's defaults).
    oeq_dtype = oeq.torch_to_oeq_dtype(dtype)
    return oeq.TPProblem(str(e3nn_tp.irreps_in1), str(e3nn_tp.irreps_in2), str(e3nn_tp.irreps_out), instructions,
                         shared_weights=e3nn_tp.shared_weights, internal_weights=False,
                         irrep_dtype=oeq_dtype, weight_dtype=oeq_dtype)


def _oeq_weights(module, e3nn_tp, w):
    """e3nn weights -> oeq's: the sign of each path's Clebsch-Gordan tensor, then oeq's order.

    OpenEquivariance computes wigner_3j like e3nn >= 0.5, whose sign differs from e3nn 0.4.4's for some triples with odd
    l1 + l2 + l3 (measured: (1,2,2), (1,3,3), (2,1,2), (2,2,1), (3,1,3), (3,3,1)); those only occur in parity-ignoring
    products such as the seed's (all 'e'). Each path has its own weights, so negating them gives e3nn 0.4.4's function
    exactly; the flipped paths are named in the note."""
    from e3nn import o3
    from openequivariance.core.e3nn_lite import wigner_3j as oeq_wigner_3j

    signs, flipped = [], []
    for i in e3nn_tp.instructions:
        ls = (e3nn_tp.irreps_in1[i.i_in1].ir.l, e3nn_tp.irreps_in2[i.i_in2].ir.l, e3nn_tp.irreps_out[i.i_out].ir.l)
        overlap = float((torch.from_numpy(oeq_wigner_3j(*ls)) * o3.wigner_3j(*ls, dtype=torch.float64)).sum())
        assert abs(abs(overlap) - 1) < 1e-6, (ls, overlap)  # the same tensor up to sign
        signs += [1.0 if overlap > 0 else -1.0] * torch.Size(i.path_shape).numel()
        flipped += [ls] if overlap < 0 else []
    signed = w.detach() * torch.tensor(signs, dtype=w.dtype, device=w.device)
    wo = _leaf(module.reorder_weights_from_e3nn(signed, has_batch_dim=not e3nn_tp.shared_weights), like=w)
    note = "weights reordered from e3nn" if not torch.equal(wo, signed) else "weights in e3nn order"
    return wo, note + (f"; CG sign flipped vs e3nn 0.4.4 (weights negated) on paths {flipped}" if flipped else "")


def oeq_tp(libs, e3nn_tp, x, y, w, g):
    tp = libs.oeq.TensorProduct(_oeq_problem(libs, e3nn_tp, x.dtype))
    wo, note = _oeq_weights(tp, e3nn_tp, w)
    return Baseline(lambda: tp(x, y, wo), [x, y, wo], g, lambda out: out, note)


def oeq_conv(libs, e3nn_tp, x, y, w, g, sender, receiver):
    conv = libs.oeq.TensorProductConv(_oeq_problem(libs, e3nn_tp, x.dtype), deterministic=False)
    wo, note = _oeq_weights(conv, e3nn_tp, w)
    return Baseline(lambda: conv(x, y, wo, receiver, sender), [x, y, wo], g, lambda out: out, "atomic; " + note)


SH = {"cueq": cueq_sh, "oeq": None}
TP = {"cueq": cueq_tp, "oeq": oeq_tp}
CONV = {"cueq": cueq_conv, "oeq": oeq_conv}
