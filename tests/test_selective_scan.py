"""Every selective-scan implementation agrees with the float64 step-by-step recurrence."""

import shutil
import subprocess
import sys

import pytest
import torch

from model.network import scan_extension
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
def test_install_builds_the_fused_extension_where_a_compiler_exists():
    assert scan_extension.load_extension() is not None  # built by `make install` / the image build


def test_a_forward_pass_never_compiles_the_extension(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("compiled on a forward pass")

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing built there
    monkeypatch.setattr(scan_extension, "build", refuse)
    monkeypatch.setattr(scan_extension, "_module", None)
    monkeypatch.setattr(scan_extension, "_attempted", False)
    u, delta, A, B, C, D, z, bias = _inputs(length=7)
    assert scan_extension.load_extension() is None
    torch.testing.assert_close(
        selective_scan(u, delta, A, B, C, D, z, bias, True),
        selective_scan_reference(u, delta, A, B, C, D, z, bias, True),
        atol=1e-4,
        rtol=1e-4,
    )


def test_importing_the_model_changes_no_process_setting():
    """Flushing subnormals is process state: importing must not set it; building a scanning layer does."""
    check = (
        "import torch, importlib, pkgutil, model.network as n\n"
        "for m in pkgutil.iter_modules(n.__path__): importlib.import_module('model.network.' + m.name)\n"
        "import model.inference, model.training.trainer\n"
        "before = (torch.tensor([1e-39]) * 1.0).item() != 0.0\n"
        "from model.network.s6 import SelectiveScan1D\n"
        "SelectiveScan1D(8, 4)\n"
        "print(before, (torch.tensor([1e-39]) * 1.0).item() == 0.0)\n"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr


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


def test_hand_written_recurrence_backward_passes_gradcheck():
    from model.network.selective_scan import LinearRecurrence

    g = torch.Generator().manual_seed(1)
    decay = torch.rand(6, 2, 3, 4, generator=g, dtype=torch.double).requires_grad_()
    drive = torch.randn(6, 2, 3, 4, generator=g, dtype=torch.double).requires_grad_()
    readout = torch.randn(6, 2, 4, 1, generator=g, dtype=torch.double).requires_grad_()
    assert torch.autograd.gradcheck(LinearRecurrence.apply, (decay, drive, readout))
