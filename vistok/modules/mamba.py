"""Mamba: the selective state-space block, in pure PyTorch, state-dict compatible with `mamba_ssm`.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv 2312.00752 (2023).
The bidirectional variant (`bimamba_type="v2"`) follows Vision Mamba (Zhu et al., ICML 2024) and the tri-directional
one (`"v3"`: forward, backward and interleaved slices) SegMamba's tri-orientated Mamba (Xing et al., "SegMamba:
Long-range Sequential Modeling Mamba For 3D Medical Image Segmentation", MICCAI 2024), the backbone of TokenUnify
(Chen et al., arXiv 2405.16847).

Parameter names and shapes equal `mamba_ssm.modules.mamba_simple.Mamba` (and its v2/v3 forks' `*_b`, `*_s` copies),
so state dicts move between the two. Per direction, with di = expand * d_model:

    x, z = split(in_proj(u));  x = silu(causal_depthwise_conv(x));  (dt, B, C) = split(x_proj(x))
    delta = softplus(dt_proj(dt));  A = -exp(A_log)
    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t x_t;   y_t = <h_t, C_t> + D * x_t
    out = out_proj(sum over directions of y * silu(z))

The scan runs on `mamba_ssm`'s CUDA kernel when that package imports and the tensors are on CUDA, else on a pure
PyTorch scan: a custom autograd Function with a hand-written backward (the same linear recurrence in reverse time),
run in cache-sized time blocks whose states backward recomputes, as the CUDA kernel does (memory O(B L D), not
O(B L D N)); inside a block a chunked scan loops over ~2 sqrt(T) positions, never over single time steps under
autograd. `selective_scan_ref` is the naive sequential recurrence that the tests and benchmarks/bench_mamba.py compare
with.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from vistok.errors import VistokError

SCAN_CHUNK = 64  # time steps per chunk of the linear scan; ~sqrt of typical lengths keeps both loops short
SCAN_BLOCK_ELEMS = 1 << 19  # elements of one (B, D, T, N) time block of the selective scan (~2 MB in fp32)
_DIRECTIONS = {"none": ("",), "v2": ("", "_b"), "v3": ("", "_b", "_s")}
_warned: set[str] = set()


def _warn_once(path: str, message: str) -> None:
    if path not in _warned:
        _warned.add(path)
        warnings.warn(message, stacklevel=3)


# ---------------------------------------------------------------------------------------------------------------------
# linear recurrence h_t = a_t * h_{t-1} + x_t along dim -2
# ---------------------------------------------------------------------------------------------------------------------


def _sequential_scan(a: torch.Tensor, x: torch.Tensor, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Time along dim 0, (T, ...) -> h, p (T, ...): the scan from a zero state and the running product of a.

    A Python loop over T, each step vectorised over contiguous slabs (no autograd).
    """
    h, p = torch.empty_like(x), torch.empty_like(a)
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    prev = None
    for t in steps:
        if prev is None:
            h[t], p[t] = x[t], a[t]
        else:
            torch.addcmul(x[t], a[t], h[prev], out=h[t])
            torch.mul(a[t], p[prev], out=p[t])
        prev = t
    return h, p


def linear_scan(a: torch.Tensor, x: torch.Tensor, reverse: bool = False, chunk: int = SCAN_CHUNK) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + x_t with h_{-1} = 0 (or h_t = a_t * h_{t+1} + x_t with `reverse`), time along dim -2:
    (..., L, N) -> (..., L, N). No autograd.

    Chunked: a sequential scan inside every chunk at once (all chunks in parallel, time-in-chunk outermost so every
    step reads contiguous memory), the chunk-boundary states propagated by the same recurrence on the chunk level
    (recursively), then one vectorised fix-up. Only products and sums of the inputs appear, so it is as stable as the
    sequential loop (no division by cumulative products).
    """
    length = x.shape[-2]
    chunk = min(chunk, length)
    pad = (-length) % chunk
    if pad:
        pads = (0, 0, pad, 0) if reverse else (0, 0, 0, pad)  # pad where the scan ends: a=1, x=0 change nothing before
        a, x = F.pad(a, pads, value=1.0), F.pad(x, pads)
    a = rearrange(a, "... (c t) n -> t ... c n", t=chunk).contiguous()
    x = rearrange(x, "... (c t) n -> t ... c n", t=chunk).contiguous()
    h, p = _sequential_scan(a, x, reverse)  # (T, ..., C, N) states of each chunk started from zero; products of a
    if h.shape[-2] > 1:
        end = 0 if reverse else -1  # where each chunk's scan ends
        carry = linear_scan(p[end], h[end], reverse, chunk)  # (..., C, N) true state where each chunk ends
        if reverse:  # chunk c continues from the state at the start of chunk c + 1
            h[..., :-1, :].addcmul_(p[..., :-1, :], carry[None, ..., 1:, :])
        else:  # chunk c continues from the state at the end of chunk c - 1
            h[..., 1:, :].addcmul_(p[..., 1:, :], carry[None, ..., :-1, :])
    h = rearrange(h, "t ... c n -> ... (c t) n")
    return h[..., pad:, :] if reverse else h[..., :length, :]


def _block_inputs(dt, u, A, B, h0):
    """Discretised inputs of one time block, the carried-in state folded into its first step:
    dt, u (B, T, D); A (D, N); B (B, T, N); h0 (B, D, N) -> a = exp(dt A), x = dt B u (B, D, T, N)."""
    a = torch.exp(rearrange(dt, "b l d -> b d l 1") * rearrange(A, "d n -> d 1 n"))
    x = rearrange(dt * u, "b l d -> b d l 1") * rearrange(B, "b l n -> b 1 l n")
    x[..., 0, :].addcmul_(a[..., 0, :], h0)  # h_0 = a_0 h0 + x_0
    return a, x


def _block_len(batch: int, d_inner: int, d_state: int, length: int) -> int:
    """Time steps per block, so one (B, D, T, N) block tensor stays about SCAN_BLOCK_ELEMS elements (in cache)."""
    fit = max(1, SCAN_BLOCK_ELEMS // max(1, batch * d_inner * d_state))
    return min(length, max(SCAN_CHUNK, 1 << (fit.bit_length() - 1)))


def _delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        delta = delta + delta_bias
    return F.softplus(delta) if delta_softplus else delta


class _SelectiveScan(torch.autograd.Function):
    """Selective scan with a hand-written backward, in time blocks: (B, D, T, N) tensors exist for one block at a
    time, only the states where blocks start are saved, and backward recomputes each block's states (as the CUDA
    kernel does), so memory is O(B L D) instead of O(B L D N). Shapes as in `selective_scan`."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus: bool):
        with _no_autocast(u):
            return _SelectiveScan._forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus)

    @staticmethod
    def _forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus: bool):
        dt = _delta(delta, delta_bias, delta_softplus)  # (B, L, D)
        batch, length, d_inner = u.shape
        block = _block_len(batch, d_inner, A.shape[1], length)
        y = torch.empty_like(u)
        h0 = u.new_zeros(batch, d_inner, A.shape[1])  # (B, D, N)
        starts = []
        for s in range(0, length, block):
            t = slice(s, s + block)
            starts.append(h0)
            a, x = _block_inputs(dt[:, t], u[:, t], A, B[:, t], h0)
            h = linear_scan(a, x)  # (B, D, T, N)
            y[:, t] = torch.einsum("bdln,bln->bld", h, C[:, t])
            h0 = h[..., -1, :].clone()
        if D is not None:
            y += u * D
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, torch.stack(starts))
        ctx.delta_softplus, ctx.block = delta_softplus, block
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        with _no_autocast(dy):
            return _SelectiveScan._backward(ctx, dy.to(ctx.saved_tensors[0].dtype))

    @staticmethod
    def _backward(ctx, dy):
        u, delta, A, B, C, D, delta_bias, starts = ctx.saved_tensors
        pre = delta if delta_bias is None else delta + delta_bias
        dt = F.softplus(pre) if ctx.delta_softplus else pre
        du = dy * D if D is not None else torch.zeros_like(u)
        ddt, dA, dB, dC = torch.empty_like(dt), torch.zeros_like(A), torch.empty_like(B), torch.empty_like(C)
        carry = torch.zeros_like(starts[0])  # dL/dh flowing into the block's last step from later blocks, (B, D, N)
        for i in reversed(range(len(starts))):
            t = slice(i * ctx.block, (i + 1) * ctx.block)
            dt_b, u_b, B_b, dy_b = dt[:, t], u[:, t], B[:, t], dy[:, t]
            a, x = _block_inputs(dt_b, u_b, A, B_b, starts[i])
            h = linear_scan(a, x)  # the block's states, recomputed (B, D, T, N)
            dC[:, t] = torch.einsum("bld,bdln->bln", dy_b, h)
            dh = torch.einsum("bld,bln->bdln", dy_b, C[:, t])
            dh[..., -1, :] += carry
            g = linear_scan(F.pad(a[..., 1:, :], (0, 0, 0, 1)), dh, reverse=True)  # g_t = dh_t + a_{t+1} g_{t+1}
            carry = a[..., 0, :] * g[..., 0, :]
            h_prev = torch.cat([starts[i][..., None, :], h[..., :-1, :]], dim=-2)  # h_{t-1}
            dz = g * h_prev * a  # through a = exp(z), z = dt A
            dA += torch.einsum("bdln,bld->dn", dz, dt_b)
            d_dtu = torch.einsum("bdln,bln->bld", g, B_b)  # through x = (dt u) B
            dB[:, t] = torch.einsum("bdln,bld->bln", g, dt_b * u_b)
            ddt[:, t] = torch.einsum("bdln,dn->bld", dz, A) + d_dtu * u_b
            du[:, t] += d_dtu * dt_b
        if ctx.delta_softplus:
            ddt = ddt * torch.sigmoid(pre)
        dD = None if D is None else (dy * u).sum((0, 1))
        dbias = None if delta_bias is None else ddt.sum((0, 1))
        return du, ddt, dA, dB, dC, dD, dbias, None


# ---------------------------------------------------------------------------------------------------------------------
# selective scan: shapes u, delta (B, L, D); A (D, N); B, C (B, L, N); D (D,) -> y (B, L, D)
# ---------------------------------------------------------------------------------------------------------------------


def _no_autocast(t: torch.Tensor):
    """Autocast off for the scan: its casts to fp32 would be undone by autocast's bf16 einsums (matmuls) otherwise."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def _compute_dtype(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32  # fp32 even under autocast
    return [None if t is None else t.to(dtype) for t in tensors]


def selective_scan_torch(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
) -> torch.Tensor:
    """Selective scan on the blocked, chunked custom-backward recurrence: (B, L, D) -> (B, L, D)."""
    return _SelectiveScan.apply(*_compute_dtype(u, delta, A, B, C, D, delta_bias), delta_softplus).to(u.dtype)


def selective_scan_ref(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
) -> torch.Tensor:
    """The naive sequential recurrence (a Python loop over time under autograd), for tests and benchmarks."""
    with _no_autocast(u):
        return _selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus)


def _selective_scan_ref(u, delta, A, B, C, D, delta_bias, delta_softplus: bool) -> torch.Tensor:
    u_, delta, A, B, C, D, delta_bias = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    dt = _delta(delta, delta_bias, delta_softplus)
    a = torch.exp(rearrange(dt, "b l d -> b d l 1") * rearrange(A, "d n -> d 1 n"))  # (B, D, L, N)
    x = rearrange(dt * u_, "b l d -> b d l 1") * rearrange(B, "b l n -> b 1 l n")  # (B, D, L, N)
    h = x.new_zeros(x.shape[0], x.shape[1], x.shape[3])  # (B, D, N)
    ys = []
    for a_t, x_t, C_t in zip(a.unbind(2), x.unbind(2), C.unbind(1), strict=True):
        h = a_t * h + x_t
        ys.append(torch.einsum("bdn,bn->bd", h, C_t))
    y = torch.stack(ys, dim=1)  # (B, L, D)
    if D is not None:
        y = y + u_ * D
    return y.to(u.dtype)


def _mamba_ssm_kernel():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or its CUDA extension fails to load
        return None
    return selective_scan_fn


def selective_scan(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
    use_fast_path: bool = True,
) -> torch.Tensor:
    """`mamba_ssm`'s CUDA kernel where it imports and `u` is on CUDA, else the pure-PyTorch scan (warns once which)."""
    kernel = _mamba_ssm_kernel() if use_fast_path and u.is_cuda else None
    if kernel is None:
        _warn_once("torch", "vistok Mamba: running the pure-PyTorch chunked selective scan "
                   "(install mamba-ssm on a CUDA machine for the fused kernels)")
        return selective_scan_torch(u, delta, A, B, C, D, delta_bias, delta_softplus)
    _warn_once("cuda", "vistok Mamba: running mamba_ssm's CUDA selective-scan kernels")
    y = kernel(rearrange(u, "b l d -> b d l").contiguous(), rearrange(delta, "b l d -> b d l").contiguous(), A,
               rearrange(B, "b l n -> b n l").contiguous(), rearrange(C, "b l n -> b n l").contiguous(),
               None if D is None else D.float(), None, None if delta_bias is None else delta_bias.float(),
               delta_softplus)
    return rearrange(y, "b d l -> b l d")


# ---------------------------------------------------------------------------------------------------------------------
# scan orders of the directions
# ---------------------------------------------------------------------------------------------------------------------


def to_order(x: torch.Tensor, direction: str, nslices: int) -> torch.Tensor:
    """Reorder (B, L, D) for a direction: '' forward, '_b' reversed, '_s' the nslices contiguous slices interleaved."""
    if direction == "_b":
        return x.flip(1)
    if direction == "_s":
        return rearrange(x, "b (s l) d -> b (l s) d", s=nslices)
    return x


def from_order(x: torch.Tensor, direction: str, nslices: int) -> torch.Tensor:
    """Inverse of `to_order`."""
    if direction == "_b":
        return x.flip(1)
    if direction == "_s":
        return rearrange(x, "b (l s) d -> b (s l) d", s=nslices)
    return x


def slice_order(length: int, nslices: int) -> list[int]:
    """Positions visited by the slice direction, e.g. length 10, 5 slices -> [0, 2, 4, 6, 8, 1, 3, 5, 7, 9]."""
    return to_order(torch.arange(length).view(1, length, 1), "_s", nslices).flatten().tolist()


# ---------------------------------------------------------------------------------------------------------------------
# the block
# ---------------------------------------------------------------------------------------------------------------------


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


class Mamba(nn.Module):
    """Mamba v1 block over (B, L, d_model) sequences; arguments and parameters as in `mamba_ssm`'s `Mamba`.

    `bimamba_type`: "none" (causal, forward only), "v2" (forward + backward) or "v3" (forward + backward + slices:
    the sequence cut into `nslices` contiguous pieces, interleaved, scanned, de-interleaved; L must divide by it).
    `in_proj` and `out_proj` are shared by the directions; each has its own conv1d, x_proj, dt_proj, A_log and D.
    """

    def __init__(
        self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2, dt_rank: int | str = "auto",
        dt_min: float = 0.001, dt_max: float = 0.1, dt_init: Literal["random", "constant"] = "random",
        dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
        use_fast_path: bool = True, layer_idx: int | None = None, device=None, dtype=None,
        bimamba_type: Literal["none", "v2", "v3"] = "none", nslices: int = 5,
    ) -> None:
        super().__init__()
        if bimamba_type not in _DIRECTIONS:
            raise VistokError(f"bimamba_type must be one of {', '.join(_DIRECTIONS)}, got {bimamba_type!r}")
        if dt_init not in ("random", "constant"):
            raise VistokError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        if nslices < 1:
            raise VistokError(f"nslices must be positive, got {nslices}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path, self.layer_idx = use_fast_path, layer_idx
        self.bimamba_type, self.nslices = bimamba_type, nslices
        self.directions = _DIRECTIONS[bimamba_type]

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory)
        for sfx in self.directions:
            setattr(self, f"conv1d{sfx}", nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                                    padding=d_conv - 1, bias=conv_bias, **factory))
            setattr(self, f"x_proj{sfx}", nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory))
            dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
            self._init_dt(dt_proj, dt_min, dt_max, dt_init, dt_scale, dt_init_floor)
            setattr(self, f"dt_proj{sfx}", dt_proj)
            # S4D-real init: A = -(1..N) on every row, stored as log; D = 1
            A = repeat(torch.arange(1, d_state + 1, dtype=torch.float32, device=device), "n -> d n", d=self.d_inner)
            A_log = nn.Parameter(torch.log(A).contiguous())
            D = nn.Parameter(torch.ones(self.d_inner, device=device))
            A_log._no_weight_decay = D._no_weight_decay = True
            setattr(self, f"A{sfx}_log", A_log)
            setattr(self, f"D{sfx}", D)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    def _init_dt(self, dt_proj: nn.Linear, dt_min: float, dt_max: float, dt_init: str, dt_scale: float,
                 floor: float) -> None:
        std = self.dt_rank**-0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                dt_proj.weight.fill_(std)
            else:
                dt_proj.weight.uniform_(-std, std)
            # softplus(bias) = dt, dt log-uniform in [dt_min, dt_max]
            dt = torch.exp(torch.rand(self.d_inner, device=dt_proj.bias.device) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=floor)
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        dt_proj.bias._no_reinit = True

    def ssm(self, x: torch.Tensor, sfx: str = "") -> torch.Tensor:
        """One direction's conv + selective scan on an already reordered (B, L, di) sequence -> (B, L, di)."""
        conv, x_proj = getattr(self, f"conv1d{sfx}"), getattr(self, f"x_proj{sfx}")
        dt_proj = getattr(self, f"dt_proj{sfx}")
        length = x.shape[1]
        x = F.silu(conv(rearrange(x, "b l d -> b d l"))[..., :length])  # causal: keep the first L outputs
        x = rearrange(x, "b d l -> b l d")
        dt, B, C = x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight)  # (B, L, di); its bias is added inside the scan in fp32, as in mamba_ssm
        A = -torch.exp(_at_least_fp32(getattr(self, f"A{sfx}_log")))  # (di, N)
        return selective_scan(x, delta, A, B, C, _at_least_fp32(getattr(self, f"D{sfx}")),
                              _at_least_fp32(dt_proj.bias), delta_softplus=True, use_fast_path=self.use_fast_path)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, L, d_model)."""
        length = hidden_states.shape[1]
        if "_s" in self.directions and length % self.nslices:
            raise VistokError(f"tri-directional Mamba needs a sequence length divisible by nslices={self.nslices}, "
                              f"got {length}; change the input size or nslices")
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, di) each
        y = sum(from_order(self.ssm(to_order(x, d, self.nslices), d), d, self.nslices) for d in self.directions)
        return self.out_proj(y.to(z.dtype) * F.silu(z))  # (B, L, d_model)
