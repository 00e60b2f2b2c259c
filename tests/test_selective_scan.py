"""Every selective-scan implementation agrees with the float64 step-by-step recurrence."""

import shutil

import pytest
import torch

from model.network import scan_extension
from model.network.mamba_decoder import es2d_merge, es2d_split
from model.network.selective_scan import (
    FusedScan,
    cuda_kernel_available,
    selective_scan,
    selective_scan_fused,
    selective_scan_reference,
    selective_scan_torch,
)

HAS_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None
needs_fused = pytest.mark.skipif(
    scan_extension.load_extension() is None, reason="the fused scan extension could not be built here"
)
CPU_IMPLEMENTATIONS = [
    pytest.param(selective_scan_torch, id="loop"),
    pytest.param(selective_scan_fused, id="fused", marks=needs_fused),
]


def _inputs(batch=2, channels=8, length=49, state=16, dt_scale=1.0, a_scale=1.0, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, channels, length, generator=g)
    delta = torch.randn(batch, channels, length, generator=g) * dt_scale
    A = -torch.rand(channels, state, generator=g) * a_scale - 0.01
    B = torch.randn(batch, state, length, generator=g)
    C = torch.randn(batch, state, length, generator=g)
    D = torch.randn(channels, generator=g)
    z = torch.randn(batch, channels, length, generator=g)
    bias = torch.randn(channels, generator=g)
    return [t.to(device) for t in (u, delta, A, B, C, D, z, bias)]


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
@pytest.mark.parametrize("dt_scale,a_scale", [(1.0, 1.0), (5.0, 16.0), (20.0, 100.0)])
@pytest.mark.parametrize("grad", [False, True])
def test_scan_matches_float64_reference_including_large_dt_times_a(implementation, dt_scale, a_scale, grad):
    u, delta, A, B, C, D, z, bias = _inputs(dt_scale=dt_scale, a_scale=a_scale)
    reference = selective_scan_reference(u, delta, A, B, C, D, z, bias, True)
    with torch.set_grad_enabled(grad):
        result = implementation(u, delta, A, B, C, D, z, bias, True)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_scan_without_softplus_bias_or_gate(implementation):
    u, delta, A, B, C, _, _, _ = _inputs(length=7)
    delta = delta.abs()
    torch.testing.assert_close(
        implementation(u, delta, A, B, C),
        selective_scan_reference(u, delta, A, B, C),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
@pytest.mark.parametrize("dt_scale,a_scale", [(1.0, 1.0), (20.0, 100.0)])
def test_scan_gradients_match_reference(implementation, dt_scale, a_scale):
    tensors = _inputs(length=9, channels=4, state=4, dt_scale=dt_scale, a_scale=a_scale)
    leaves = [t.double().requires_grad_() for t in tensors]
    weights = torch.randn(leaves[0].shape, generator=torch.Generator().manual_seed(3), dtype=torch.double)
    (implementation(*leaves[:7], leaves[7], True) * weights).sum().backward()
    ours = [t.grad.clone() for t in leaves]
    leaves = [t.double().requires_grad_() for t in tensors]
    (selective_scan_reference(*leaves[:7], leaves[7], True) * weights).sum().backward()
    for mine, theirs in zip(ours, [t.grad for t in leaves], strict=True):
        torch.testing.assert_close(mine, theirs.to(mine.dtype), atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_float32_gradients_of_a_training_sized_scan_match_the_loop(implementation):
    """Batch spread over threads: the per-thread grad-A partials and per-batch grad B/C must add up."""
    tensors = _inputs(batch=9, channels=32, length=49, state=16, seed=5)
    weights = torch.randn(9, 32, 49, generator=torch.Generator().manual_seed(4))
    leaves = [t.clone().requires_grad_() for t in tensors]
    (implementation(*leaves[:7], leaves[7], True) * weights).sum().backward()
    reference = [t.double().requires_grad_() for t in tensors]
    (selective_scan_reference(*reference[:7], reference[7], True) * weights.double()).sum().backward()
    for mine, theirs in zip(leaves, reference, strict=True):
        scale = theirs.grad.abs().max().item()
        assert (mine.grad.double() - theirs.grad).abs().max().item() <= 1e-4 * scale


@needs_fused
def test_fused_kernel_passes_gradcheck():
    extension = scan_extension.load_extension()
    g = torch.Generator().manual_seed(2)
    dt = torch.rand(2, 3, 5, generator=g, dtype=torch.double).requires_grad_()
    u = torch.randn(2, 3, 5, generator=g, dtype=torch.double).requires_grad_()
    A = (-torch.rand(3, 4, generator=g, dtype=torch.double)).requires_grad_()
    B = torch.randn(2, 4, 5, generator=g, dtype=torch.double).requires_grad_()
    C = torch.randn(2, 4, 5, generator=g, dtype=torch.double).requires_grad_()
    assert torch.autograd.gradcheck(lambda *x: FusedScan.apply(extension, *x), (dt, u, A, B, C))


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler on this machine")
def test_fused_extension_builds_where_a_compiler_exists():
    assert scan_extension.load_extension() is not None


@needs_fused
def test_dispatch_uses_the_fused_kernel_and_falls_back_to_the_loop_when_disabled():
    u, delta, A, B, C, D, z, bias = _inputs()
    fused = selective_scan(u, delta, A, B, C, D, z, bias, True)
    scan_extension.set_enabled(False)
    try:
        assert scan_extension.load_extension() is None
        looped = selective_scan(u, delta, A, B, C, D, z, bias, True)
    finally:
        scan_extension.set_enabled(True)
    torch.testing.assert_close(fused, looped, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not cuda_kernel_available(), reason="needs CUDA and mamba_ssm")
def test_cuda_kernel_matches_reference():
    tensors = _inputs(device="cuda")
    result = selective_scan(*tensors[:7], tensors[7], True)
    reference = selective_scan_reference(*[t.cpu() for t in tensors[:7]], tensors[7].cpu(), True)
    torch.testing.assert_close(result.cpu(), reference, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("height,width", [(14, 14), (16, 16), (25, 25), (7, 10)])
def test_es2d_split_and_merge_are_inverse(height, width):
    grid = torch.randn(2, height, width, 3)
    sequences, size = es2d_split(grid)
    assert sequences.shape[0] == 8
    torch.testing.assert_close(es2d_merge(sequences, size), grid)


def test_es2d_sub_grids_are_interleaved_and_two_are_transposed():
    grid = torch.arange(16.0).view(1, 4, 4, 1)
    sequences, _ = es2d_split(grid)
    assert sequences[0, :, 0].tolist() == [0, 2, 8, 10]  # rows 0,2 x cols 0,2, row-major
    assert sequences[2, :, 0].tolist() == [1, 9, 3, 11]  # rows 0,2 x cols 1,3, column-major


def test_hand_written_recurrence_backward_passes_gradcheck():
    from model.network.selective_scan import LinearRecurrence

    g = torch.Generator().manual_seed(1)
    decay = torch.rand(6, 2, 3, 4, generator=g, dtype=torch.double).requires_grad_()
    drive = torch.randn(6, 2, 3, 4, generator=g, dtype=torch.double).requires_grad_()
    readout = torch.randn(6, 2, 4, 1, generator=g, dtype=torch.double).requires_grad_()
    assert torch.autograd.gradcheck(LinearRecurrence.apply, (decay, drive, readout))
