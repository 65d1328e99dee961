"""CPU linear layers through oneDNN's inner product: fp32 products instead of MKL's SGEMM, reordered weights.

Why: PyTorch's CPU ``F.linear`` in fp32 calls MKL, and MKL takes a slower code path on AMD CPUs. On the
AMD EPYC (Zen 5, AVX-512) development machines, with 2 threads, a ``[4352, 768] × [768, 3072]`` product
(a training batch through the MLP) runs at ~185 GFLOP/s in MKL and ~335 GFLOP/s in oneDNN, which PyTorch
also ships and which has its own AVX-512 kernels; streaming a 12-layer, 768-hidden model's weights for one
decoding step of 4 rows takes 14.9 ms through MKL and 13.0 ms through oneDNN (11.0 against 20.0 ms at one
row). bf16 products already go through oneDNN inside ``F.linear``, so only fp32 is routed here.

On Intel CPUs, which MKL is tuned for, the input gradient is the exception: there ``grad @ weight`` through
MKL beat oneDNN's inner product on the transposed weight at every training size measured (2 threads, an
Intel Xeon with AVX-512, 1,088 rows: 13.8 against 28.4 ms for a 3072 → 768 layer, 262 against 378 ms for
the 58240-row output projection), so it takes ``torch.matmul`` there (see ``_mkl_is_tuned_here``). So does
decoding at one to three rows: MKL's matrix-vector kernels stream a 12-layer, 768-wide model's weights
there in 13.9–16.9 ms, oneDNN in 16.2–18.5 ms even from its reordered copies (``mkl_streams_faster``).

oneDNN's per-call overhead (~20 µs) loses to MKL on small products (the demo models' 192-wide layers at a
few rows), hence the size threshold. Results equal ``F.linear``'s up to float rounding, and repeat bit for
bit for the same shapes and thread count, which exact resume relies on.

For sampling, ``packed_weights`` goes further: inside it the weights are multiplied in copies reordered into
oneDNN's blocked layout, which streams them about twice as fast again (the same 12 layers at 4 rows: 6.7
against 13.7 ms in fp32, 4.3 against 7.0 ms in bf16). The copies double the weights' memory while sampling,
so they are made only where they fit (see ``packed_weights``); they are never trained through.
"""

import contextlib
import functools
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from common.memory import available_memory_bytes

# The private ATen op PyTorch's own CPU compiler path (inductor) uses for linear layers; present whenever
# PyTorch is built with oneDNN. ``None`` where it is not: every product then stays on ``F.linear``.
try:
    _inner_product_op = torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
except (AttributeError, RuntimeError):
    _inner_product_op = None

# Products of at least this many multiply-adds (rows × in × out, rows counted as at least 8) go to oneDNN:
# every 768-wide layer of a CogView-sized model at any row count, the demo's 192-wide layers from ~32 rows on.
_MIN_MULTIPLY_ADDS = 1 << 22
_MIN_ROWS_COUNTED = 8
# On Intel CPUs fp32 products of at most this many rows stream faster through MKL (``mkl_streams_faster``).
_MKL_MAX_ROWS_ON_INTEL = 3
# Attribute under which ``packed_weights`` hangs a weight's reordered copy, with the weight's version then.
_PACKED_ATTRIBUTE = "onednn_packed"
# Attribute of a weight whose row ranges are multiplied on their own (the tied output projection onto the
# image tokens only): ``{(first row, rows): (version, copy)}``, filled on first use.
_ROW_SLICES_ATTRIBUTE = "onednn_packed_row_slices"
# Only weights of at least this many elements are copied: on smaller ones (the demo models' 192-wide layers)
# the per-call overhead outweighs the faster streaming, and sampling the demo model got slower.
_MIN_PACKED_ELEMENTS = 1 << 18
# The reorder's row-count hint: the blocked layout it picks for 4 rows streams as fast from 1 to 64 rows.
_PACKING_ROWS_HINT = 4
# Copies are made only while they take at most this share of the memory the system has available.
_MAX_SHARE_OF_AVAILABLE_MEMORY = 0.5


def handles(input_: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``linear`` should compute ``input_ @ weight.T`` here: fp32 on the CPU, big enough, no autocast.

    Under CPU autocast ``F.linear`` must run, since only it is cast to the autocast dtype.
    """
    if _inner_product_op is None or input_.device.type != "cpu":
        return False
    if input_.dtype != torch.float32 or weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
        return False
    rows = input_.numel() // max(input_.size(-1), 1)
    return max(rows, _MIN_ROWS_COUNTED) * weight.numel() >= _MIN_MULTIPLY_ADDS


@functools.cache
def _mkl_is_tuned_here() -> bool:
    """Whether this is an Intel CPU (``vendor_id`` of ``/proc/cpuinfo``), whose MKL products are fast.

    False where the vendor cannot be read: the oneDNN path, measured on AMD CPUs, is kept there.
    """
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip() == "GenuineIntel"
    except OSError:
        pass
    return False


def mkl_streams_faster(input_: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``F.linear`` (MKL) beats both oneDNN paths here: fp32 on an Intel CPU at one to three rows.

    Only for products that oneDNN would otherwise take (``handles``): smaller ones keep their own path.
    """
    rows = input_.numel() // max(input_.size(-1), 1)
    return rows <= _MKL_MAX_ROWS_ON_INTEL and _mkl_is_tuned_here() and handles(input_, weight)


def _inner_product(input_: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``input_ @ weight.T + bias`` in oneDNN; ``input_`` is ``[..., in]``, ``weight`` is ``[out, in]``."""
    return _inner_product_op(input_, weight, bias, "none", [], "")


class _InnerProductLinear(torch.autograd.Function):
    """``F.linear`` with the forward and the input-gradient product in oneDNN (as slow in MKL as the forward
    on AMD; in MKL on Intel CPUs), the weight gradient in ``torch.mm``."""

    @staticmethod
    def forward(ctx, input_: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(input_, weight)
        ctx.has_bias = bias is not None
        return _inner_product(input_, weight, bias)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        input_, weight = ctx.saved_tensors
        grad_rows = grad_output.reshape(-1, grad_output.size(-1))  # [rows, out]
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0] and _mkl_is_tuned_here():
            grad_input = torch.matmul(grad_output, weight)  # [..., out] @ [out, in]
        elif ctx.needs_input_grad[0]:
            grad_input = _inner_product(grad_output, weight.t(), None)
        if ctx.needs_input_grad[1]:
            # [out, rows] @ [rows, in] through torch.mm, which takes the transposed operands as they are:
            # the inner product would first copy both into row-major transposes, and for the tied output
            # projection the gradient's transpose alone is [58240, rows] (the copy took 0.9 s of a 16 s
            # training step of the 12-layer bench model on the AVX2 EPYC, and mm beat copy + inner product).
            input_rows = input_.reshape(-1, input_.size(-1))  # [rows, in]
            grad_weight = torch.mm(grad_rows.t(), input_rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)
        return grad_input, grad_weight, grad_bias


def _tracked(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(input_: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(input_, weight, bias)`` in oneDNN, differentiable; call only where ``handles`` is true."""
    if _tracked(input_, weight, bias):
        return _InnerProductLinear.apply(input_, weight, bias)
    return _inner_product(input_, weight, bias)


def packed_copy(input_: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """The reordered copy of ``weight`` to multiply ``input_`` with, or None where there is none to use.

    None outside ``packed_weights``, for a weight changed in place since it was copied, under autocast, for
    another dtype or device, and where gradients are recorded.
    """
    entry = getattr(weight, _PACKED_ATTRIBUTE, None)
    if entry is None and weight._base is not None:
        entry = _row_slice_copy(weight)
    if entry is None or entry[0] != weight._version or input_.dtype != weight.dtype:
        return None
    if input_.device.type != "cpu" or torch.is_autocast_enabled("cpu") or _tracked(input_, weight):
        return None
    return entry[1]


def _row_slice_copy(rows: torch.Tensor) -> tuple[int, torch.Tensor] | None:
    """The copy of ``rows``, whole rows of a weight ``packed_weights`` slices, made on first use."""
    base = rows._base
    slices = getattr(base, _ROW_SLICES_ATTRIBUTE, None)
    if slices is None or rows.dim() != 2 or not rows.is_contiguous() or rows.size(1) != base.size(-1):
        return None
    if rows.numel() < _MIN_PACKED_ELEMENTS:
        return None
    key = (rows.storage_offset() - base.storage_offset(), rows.size(0))
    entry = slices.get(key)
    if entry is None or entry[0] != rows._version:
        with torch.no_grad():
            entry = slices[key] = (rows._version, _reorder(rows))
    return entry


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, _PACKING_ROWS_HINT)


def multiply_packed(input_: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``input_ @ weight.T + bias`` with ``packed``, the weight's copy from ``packed_copy``."""
    return _inner_product(input_, packed, bias)


def _packable(weight: torch.Tensor) -> bool:
    if _inner_product_op is None or weight.device.type != "cpu" or weight.dim() != 2:
        return False
    if weight.numel() < _MIN_PACKED_ELEMENTS:
        return False
    return weight.dtype == torch.float32 or (
        weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


@contextlib.contextmanager
def packed_weights(weights: Iterable[torch.Tensor], sliced: Iterable[torch.Tensor] = ()) -> Iterator[bool]:
    """Inside, inference products with these CPU fp32/bf16 weights use reordered copies; yields whether made.

    ``weights`` are copied on entry; row ranges of the ``sliced`` weights (the tied embedding, whose image
    rows alone make the output projection while sampling an image) on their first use. All copies are
    dropped on exit; a weight already copied by an enclosing ``packed_weights`` keeps its copy. Nothing is
    copied where the copies would take more than half of the memory available (a model filling most of the
    machine, such as the 4B in fp32 on 24 GB, samples from its plain weights as before) or where the system
    does not report its available memory.
    """
    whole = [w for w in dict.fromkeys(weights) if _packable(w) and not hasattr(w, _PACKED_ATTRIBUTE)]
    by_rows = [w for w in dict.fromkeys(sliced) if _packable(w) and not hasattr(w, _ROW_SLICES_ATTRIBUTE)]
    needed = sum(w.numel() * w.element_size() for w in whole + by_rows)
    available = available_memory_bytes()
    if not needed or available is None or needed > _MAX_SHARE_OF_AVAILABLE_MEMORY * available:
        yield False
        return
    try:
        with torch.no_grad():
            for weight in whole:
                setattr(weight, _PACKED_ATTRIBUTE, (weight._version, _reorder(weight)))
        for weight in by_rows:
            setattr(weight, _ROW_SLICES_ATTRIBUTE, {})
        yield True
    finally:
        for weight, attribute in [(w, _PACKED_ATTRIBUTE) for w in whole] + [
            (w, _ROW_SLICES_ATTRIBUTE) for w in by_rows
        ]:
            if hasattr(weight, attribute):
                delattr(weight, attribute)
