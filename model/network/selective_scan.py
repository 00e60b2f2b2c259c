"""The Mamba S6 selective scan: `h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t`, `y_t = C_t h_t + D x_t`.

Three implementations with one signature (that of `mamba_ssm.selective_scan_fn`):
- `selective_scan_reference`: float64, one step at a time; the ground truth for tests.
- `selective_scan_torch`: a plain time loop over precomputed decays. On 2 CPU threads it beat
  log-depth parallel scans at these lengths, it exports to ONNX (the loop unrolls for a fixed grid),
  and it never forms `exp(cumsum(dt A))`, which overflows float32 when `dt |A|` is large.
- `mamba_ssm`'s CUDA kernel, used when installed and the tensors are on CUDA.

Shapes: u, delta (B, D, L); A (D, N); B, C (B, N, L); D (D,); z (B, D, L) or None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# exp(dt * A) of a strongly decaying channel, and states multiplied by it, fall into float32's
# subnormal range, where x86 CPUs run 10-100x slower (a training step went from 0.3 s to 60 s).
# Flushing subnormals to zero changes results by less than 1e-38.
torch.set_flush_denormal(True)

try:  # optional extra `cuda`
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _cuda_selective_scan
except Exception:  # noqa: BLE001 - ImportError, or a CUDA error at import on machines without a GPU
    _cuda_selective_scan = None


def _prepare_delta(
    delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool
) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None]
    return F.softplus(delta) if delta_softplus else delta


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Float64, step by step, straight from the recurrence. Slow; for tests only."""
    dtype = u.dtype
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    delta = _prepare_delta(delta, None if delta_bias is None else delta_bias.double(), delta_softplus)
    batch, channels, length = u.shape
    state = u.new_zeros(batch, channels, A.shape[1])
    outputs = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A[None])
        state = decay * state + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        outputs.append((state * C[:, None, :, t]).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + D.double()[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    return y.to(dtype)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    # Time-major and contiguous per step: decay and drive are (L, B, D, N), C is (L, B, N, 1).
    delta_t = delta.permute(2, 0, 1).contiguous()
    decay = torch.exp(delta_t.unsqueeze(-1) * A)
    drive = (delta_t * u.permute(2, 0, 1)).unsqueeze(-1) * B.permute(2, 0, 1).contiguous().unsqueeze(2)
    readout = C.permute(2, 0, 1).contiguous().unsqueeze(-1)
    if torch.jit.is_tracing() or torch.is_grad_enabled():
        # Out-of-place steps: autograd and the ONNX exporter both need each state as its own value.
        # `unbind` rather than `decay[t]`: indexing's backward would zero-fill and add a full-size
        # gradient per step (quadratic in L); unbind's backward stacks the step gradients once.
        states = []
        state = torch.zeros_like(drive[0])
        for step_decay, step_drive in zip(decay.unbind(0), drive.unbind(0), strict=True):
            state = torch.addcmul(step_drive, step_decay, state)
            states.append(state)
        stacked = torch.stack(states)
    else:  # inference: write every state into one buffer, then read all of them out in one matmul
        stacked = torch.empty_like(drive)
        state = torch.zeros_like(drive[0])
        for t in range(drive.shape[0]):
            state = torch.addcmul(drive[t], decay[t], state, out=stacked[t])
    y = torch.matmul(stacked, readout).squeeze(-1).permute(1, 2, 0)  # (L, B, D) -> (B, D, L)
    if D is not None:
        y = y + D[None, :, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def cuda_kernel_available() -> bool:
    return _cuda_selective_scan is not None and torch.cuda.is_available()


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Dispatch: the CUDA kernel when it is installed and the inputs live on a GPU, else the loop."""
    if u.is_cuda and _cuda_selective_scan is not None and not torch.jit.is_tracing():
        return _cuda_selective_scan(
            u.contiguous(),
            delta.contiguous(),
            A.contiguous(),
            B.contiguous(),
            C.contiguous(),
            D,
            z,
            delta_bias,
            delta_softplus,
        )
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
