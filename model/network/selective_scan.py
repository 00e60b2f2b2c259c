"""The Mamba S6 selective scan: `h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t`, `y_t = C_t h_t + D x_t`.

Four implementations with one signature (that of `mamba_ssm.selective_scan_fn`):
- `selective_scan_reference`: float64, one step at a time; the ground truth for tests.
- `selective_scan_fused`: the compiled CPU kernel (`scan_extension.py`), the default on CPU when it
  is built; about 4x cheaper than the loop per scan (forward + backward) because no (L, B, D, N)
  tensor is ever formed.
- `selective_scan_torch`: a plain time loop over precomputed decays. On 2 CPU threads it beat
  log-depth parallel scans at these lengths, it exports to ONNX (the loop unrolls for a fixed grid),
  and it never forms `exp(cumsum(dt A))`, which overflows float32 when `dt |A|` is large.
- `mamba_ssm`'s CUDA kernel, used when installed and the tensors are on CUDA.

Shapes: u, delta (B, D, L); A (D, N); B, C (B, N, L); D (D,); z (B, D, L) or None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.network.scan_extension import load_extension

try:  # optional extra `cuda`
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _cuda_selective_scan
except Exception:  # noqa: BLE001 - ImportError, or a CUDA error at import on machines without a GPU
    _cuda_selective_scan = None


def flush_denormals() -> None:
    """Flush float32 subnormals to zero on this thread. exp(dt * A) of a strongly decaying channel,
    and states multiplied by it, fall into the subnormal range, where x86 CPUs run 10-100x slower
    (a training step went from 0.3 s to 60 s); flushing changes results by less than 1e-38. Called
    by the S6 layer when it is built, so only networks that scan change the process's setting."""
    torch.set_flush_denormal(True)


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


def _states_in_place(decay: torch.Tensor, drive: torch.Tensor) -> torch.Tensor:
    """All states h_t = decay_t * h_{t-1} + drive_t, written into one (L, B, D, N) buffer."""
    states = torch.empty_like(drive)
    state = torch.zeros_like(drive[0])
    for t in range(drive.shape[0]):
        state = torch.addcmul(drive[t], decay[t], state, out=states[t])
    return states


class LinearRecurrence(torch.autograd.Function):
    """`y_t = <h_t, c_t>` with `h_t = a_t h_{t-1} + b_t`, time-major, with a hand-written backward.

    Autograd through the time loop recorded ~4 ops per step and concatenated step gradients; the
    backward here is one reverse loop over preallocated buffers (`dh_t = c_t dy_t + a_{t+1} dh_{t+1}`),
    which roughly halves a CPU training step.
    """

    @staticmethod
    def forward(ctx, decay: torch.Tensor, drive: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        states = _states_in_place(decay, drive)
        ctx.save_for_backward(decay, states, readout)
        return torch.matmul(states, readout)  # (L, B, D, 1)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        decay, states, readout = ctx.saved_tensors
        direct = torch.matmul(grad_y, readout.transpose(-1, -2))  # (L, B, D, N): d loss / d h_t via y_t
        grad_states = torch.empty_like(states)
        carry = direct[-1]
        grad_states[-1] = carry
        for t in range(states.shape[0] - 2, -1, -1):
            carry = torch.addcmul(direct[t], decay[t + 1], carry, out=grad_states[t])
        grad_decay = torch.zeros_like(states)
        torch.mul(grad_states[1:], states[:-1], out=grad_decay[1:])
        grad_readout = torch.matmul(states.transpose(-1, -2), grad_y)  # (L, B, N, 1)
        return grad_decay, grad_states, grad_readout


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    # Time-major and contiguous per step: decay and drive are (L, B, D, N), C is (L, B, N, 1).
    delta_t = delta.permute(2, 0, 1).contiguous()
    decay = torch.exp(delta_t.unsqueeze(-1) * A)
    drive = (delta_t * u.permute(2, 0, 1)).unsqueeze(-1) * B.permute(2, 0, 1).contiguous().unsqueeze(2)
    readout = C.permute(2, 0, 1).contiguous().unsqueeze(-1)
    if torch.jit.is_tracing():
        # The ONNX exporter needs every step as its own value (the loop unrolls for a fixed grid).
        states = []
        state = torch.zeros_like(drive[0])
        for step_decay, step_drive in zip(decay.unbind(0), drive.unbind(0), strict=True):
            state = torch.addcmul(step_drive, step_decay, state)
            states.append(state)
        y = torch.matmul(torch.stack(states), readout)
    elif torch.is_grad_enabled():
        y = LinearRecurrence.apply(decay, drive, readout)
    else:  # inference: one buffer, then one matmul reads every state out
        y = torch.matmul(_states_in_place(decay, drive), readout)
    y = y.squeeze(-1).permute(1, 2, 0)  # (L, B, D) -> (B, D, L)
    if D is not None:
        y = y + D[None, :, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


class FusedScan(torch.autograd.Function):
    """The compiled kernel's forward/backward (which recomputes the states instead of storing them)."""

    @staticmethod
    def forward(ctx, extension, dt, u, A, B, C):
        # B and C go in time-major, (batch, L, N), so the kernel's state loops are contiguous.
        B, C = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
        ctx.extension = extension
        ctx.save_for_backward(dt, u, A, B, C)
        return extension.forward(dt, u, A, B, C)

    @staticmethod
    def backward(ctx, grad_y):
        dt, u, A, B, C = ctx.saved_tensors
        grad_dt, grad_u, grad_A, grad_B, grad_C = ctx.extension.backward(dt, u, A, B, C, grad_y)
        return None, grad_dt, grad_u, grad_A, grad_B.transpose(1, 2), grad_C.transpose(1, 2)


def selective_scan_fused(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, extension=None
):
    extension = extension or load_extension()
    if extension is None:
        raise RuntimeError("the fused selective scan extension is not available")
    delta = _prepare_delta(delta, delta_bias, delta_softplus)
    y = FusedScan.apply(extension, delta, u, A, B, C)
    if D is not None:
        y = y + D[None, :, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def cuda_kernel_available() -> bool:
    return _cuda_selective_scan is not None and torch.cuda.is_available()


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Dispatch: the CUDA kernel on a GPU when installed, the fused kernel on CPU when built, else
    the loop (always while tracing for ONNX export)."""
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
    if not u.is_cuda and not torch.jit.is_tracing() and u.dtype in (torch.float32, torch.float64):
        extension = load_extension()
        if extension is not None:
            return selective_scan_fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus, extension)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
