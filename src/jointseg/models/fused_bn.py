"""Training-mode batch normalization of a batch grouped by domain, without splitting it.

Splitting a mixed batch by domain and concatenating the parts costs an extra copy of every
activation (and of its gradient) per layer. On CUDA this module instead views the grouped
batch ``x`` [B, C, H, W] as [1, B*C, H*W] and runs PyTorch's own SyncBatchNorm kernels on it:
per-sample statistics in one pass, combined per domain (tiny [B, C] tensors), then one
normalization pass with per-(sample, channel) mean, scale and shift. The backward does the
same: one reduction pass, per-domain sums, one elementwise pass.

``REFERENCE_KERNELS`` implements the same five kernels with plain tensor operations on any
device; the tests use it to check the combination logic on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class BatchNormKernels:
    """The five SyncBatchNorm kernels, on a [1, M, L] input (M channels of L values)."""

    stats: Callable
    gather: Callable
    elemt: Callable
    backward_reduce: Callable
    backward_elemt: Callable


CUDA_KERNELS = BatchNormKernels(
    stats=torch.batch_norm_stats,
    gather=torch.batch_norm_gather_stats_with_counts,
    elemt=torch.batch_norm_elemt,
    backward_reduce=torch.batch_norm_backward_reduce,
    backward_elemt=torch.batch_norm_backward_elemt,
)


def _ref_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(x.float(), dim=(0, 2), unbiased=False)
    return mean, torch.rsqrt(var + eps)


def _ref_gather(x, mean, invstd, running_mean, running_var, momentum, eps, counts):
    counts = counts.to(mean.dtype)[:, None]
    total = counts.sum()
    var_each = invstd.pow(-2) - eps
    combined = (counts * mean).sum(0) / total
    var = (counts * (var_each + (mean - combined) ** 2)).sum(0) / total
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(combined * momentum)
        running_var.mul_(1 - momentum).add_(var * (total / (total - 1)) * momentum)
    return combined, torch.rsqrt(var + eps)


def _ref_elemt(x, weight, bias, mean, invstd, eps, *, out):
    scale = (invstd * weight)[None, :, None]
    return out.copy_((x.float() - mean[None, :, None]) * scale + bias[None, :, None])


def _ref_backward_reduce(grad, x, mean, invstd, weight, input_g, weight_g, bias_g):
    grad = grad.float()
    sum_dy = grad.sum((0, 2))
    sum_dy_xmu = (grad * (x.float() - mean[None, :, None])).sum((0, 2))
    return sum_dy, sum_dy_xmu, sum_dy_xmu * invstd, sum_dy


def _ref_backward_elemt(grad, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
    norm = 1.0 / count.sum()
    factor = (invstd**2 * sum_dy_xmu * norm)[None, :, None]
    centred = x.float() - mean[None, :, None]
    out = (grad.float() - (sum_dy * norm)[None, :, None] - centred * factor) * (invstd * weight)[
        None, :, None
    ]
    return out.to(x.dtype)


REFERENCE_KERNELS = BatchNormKernels(
    _ref_stats, _ref_gather, _ref_elemt, _ref_backward_reduce, _ref_backward_elemt
)


def fusable(x: Tensor, bns: Sequence[nn.BatchNorm2d]) -> bool:
    """Whether the fused CUDA path applies: contiguous CUDA input, affine training layers."""
    return (
        x.is_cuda
        and x.is_contiguous()
        and x.dim() == 4
        and all(bn.training and bn.affine and bn.track_running_stats for bn in bns)
    )


def momentum_factor(bn: nn.BatchNorm2d) -> float:
    """Count the batch as nn.BatchNorm2d does and return its running-average factor."""
    bn.num_batches_tracked.add_(1)
    if bn.momentum is None:
        return 1.0 / float(bn.num_batches_tracked)
    return float(bn.momentum)


def grouped_batch_norm(
    x: Tensor,
    segments: Tensor,
    counts: Sequence[int],
    bns: Sequence[nn.BatchNorm2d],
    kernels: BatchNormKernels = CUDA_KERNELS,
) -> Tensor:
    """Normalize samples ``counts[0]`` first, then ``counts[1]``, ... each by its own layer.

    ``segments`` [B] holds the segment (0..len(bns)-1) of every sample. Training mode: batch
    statistics per segment, running statistics of each layer updated as nn.BatchNorm2d would.
    """
    factors = [momentum_factor(bn) for bn in bns]
    params: list[Tensor] = []
    for bn in bns:
        params += [bn.weight, bn.bias]
    buffers = [(bn.running_mean, bn.running_var) for bn in bns]
    spec = (tuple(counts), factors, buffers, float(bns[0].eps), kernels)
    return _GroupedBatchNorm.apply(x, segments, spec, *params)


class _GroupedBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, segments: Tensor, spec, *params: Tensor) -> Tensor:
        counts, factors, buffers, eps, kernels = spec
        batch, channels, height, width = x.shape
        flat = x.reshape(1, batch * channels, height * width)
        sample_mean, sample_invstd = kernels.stats(flat, eps)
        sample_mean = sample_mean.view(batch, channels)
        sample_invstd = sample_invstd.view(batch, channels)
        means, invstds = [], []
        start = 0
        for count, factor, (running_mean, running_var) in zip(
            counts, factors, buffers, strict=True
        ):
            rows = slice(start, start + count)
            sizes = sample_mean.new_full((count,), float(height * width))
            mean, invstd = kernels.gather(
                x, sample_mean[rows], sample_invstd[rows], running_mean, running_var,
                factor, eps, sizes,
            )  # fmt: skip
            means.append(mean)
            invstds.append(invstd)
            start += count
        weight = torch.stack(params[0::2]).index_select(0, segments).reshape(-1)
        bias = torch.stack(params[1::2]).index_select(0, segments).reshape(-1)
        mean = torch.stack(means).index_select(0, segments).reshape(-1)
        invstd = torch.stack(invstds).index_select(0, segments).reshape(-1)
        out = torch.empty_like(x)  # not a view: later in-place ops (ReLU) stay legal
        kernels.elemt(flat, weight, bias, mean, invstd, eps, out=out.view_as(flat))
        # elements per segment, built on the device (a host-to-device copy would synchronize)
        sizes = sample_mean.new_zeros(len(counts)).index_add_(
            0, segments, sample_mean.new_full((batch,), float(height * width))
        )
        ctx.save_for_backward(x, segments, weight, mean, invstd, sizes)
        ctx.counts = counts
        ctx.kernels = kernels
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, segments, weight, mean, invstd, sizes = ctx.saved_tensors
        batch, channels, height, width = x.shape
        flat = x.reshape(1, batch * channels, height * width)
        grad_flat = grad.contiguous().view(1, batch * channels, height * width)
        needs_x = ctx.needs_input_grad[0]
        needs_params = any(ctx.needs_input_grad[3:])
        sum_dy, sum_dy_xmu, grad_weight, grad_bias = ctx.kernels.backward_reduce(
            grad_flat, flat, mean, invstd, weight, needs_x, needs_params, needs_params
        )
        k = len(ctx.counts)

        def per_segment(values: Tensor) -> Tensor:
            total = values.new_zeros(k, channels)
            return total.index_add_(0, segments, values.view(batch, channels))

        grad_x = None
        if needs_x:
            per_element = sizes.to(sum_dy.dtype)[:, None]
            mean_dy = (per_segment(sum_dy) / per_element).index_select(0, segments).reshape(-1)
            mean_dy_xmu = (per_segment(sum_dy_xmu) / per_element).index_select(0, segments)
            mean_dy_xmu = mean_dy_xmu.reshape(-1)
            one = torch.ones(1, dtype=torch.int32, device=x.device)
            grad_x = ctx.kernels.backward_elemt(
                grad_flat, flat, mean, invstd, weight, mean_dy, mean_dy_xmu, one
            ).view_as(x)
        grads: list[Tensor | None] = [None] * (2 * k)
        if needs_params:
            weights = per_segment(grad_weight)
            biases = per_segment(grad_bias)
            for index in range(k):
                grads[2 * index] = weights[index].to(weight.dtype)
                grads[2 * index + 1] = biases[index].to(weight.dtype)
        return (grad_x, None, None, *grads)
