"""How far float32 results move when only the order of the sums changes: the spread that the tests' tolerances are set
from (a CPU with another vector width or thread count reorders sums the same way). tests/README.md maps each family
of tolerance in the tests to a row here.

1. Decodes the MAR KL-16 fixture latents with 1 and 2 threads, in float64, and through the 0.2325 scale round trip, and
   prints each one's largest difference from the official output, absolute and relative to the output's largest value.
2. For the families of float32 comparisons between two computations of the same function (a cached against a full
   forward, chunked against dense attention, a compiled against an eager model, FlexTok's decoder, the Mamba scan),
   the same outputs with 2 threads and in float64 against 1 thread: the largest absolute difference and the
   difference relative to the output's scale, which is what an `rtol`/`atol` of 1e-5 (or 1e-6) must cover.

    python benchmarks/tolerance_spread.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from vistok.tokenizers.kl_vae import KLVAE, KLVAEConfig

FIX = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official"


def main() -> None:
    state = load_file(FIX / "mar_vae_small_state.safetensors")
    io = load_file(FIX / "mar_vae_small_io.safetensors")
    model = KLVAE(KLVAEConfig(ch=32)).eval()
    model.load_state_dict(state)
    official = io["decoded"]
    scale = official.abs().max().item()
    rows = []
    with torch.no_grad():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rows.append((f"float32, {threads} thread(s)", model.decode_raw(io["mean"])))
            rows.append((f"float32, {threads} thread(s), x 0.2325 / 0.2325",
                         model.decode_raw(io["mean"] * 0.2325 / 0.2325)))
        rows.append(("float64", model.double().decode_raw(io["mean"].double()).float()))
    print(f"{'decode of the fixture latents':<48} {'max |diff| vs official':>22} {'/ max |official|':>16}")
    for name, out in rows:
        diff = (out - official).abs().max().item()
        print(f"{name:<48} {diff:>22.2e} {diff / scale:>16.2e}")
    print()
    families()


def _spread(fn) -> tuple[float, float, float, float]:
    """fn(float64: bool) -> output; (max |diff| 2 threads, relative, max |diff| float64, relative) against 1 thread."""
    torch.set_num_threads(1)
    one = fn(False)
    torch.set_num_threads(2)
    two = fn(False)
    torch.set_num_threads(1)
    wide = fn(True).float()
    scale = one.abs().max().item()
    a, b = (two - one).abs().max().item(), (wide - one).abs().max().item()
    return a, a / scale, b, b / scale


def families() -> None:
    """The float32 families of tests/README.md: each output at 1 thread against 2 threads and against float64."""
    import torch.nn.functional as F

    from vistok.generators.xar import XAR, XARConfig
    from vistok.modules import attention
    from vistok.tokenizers.flextok import PRESETS, FlexTok

    def xar(f64: bool) -> torch.Tensor:  # test_xar.py, test_perf.py: the tests' tiny xAR, velocities of one forward
        torch.manual_seed(0)
        model = XAR(XARConfig(in_channels=4, grid=(4, 4), entity="cell", entity_size=2, width=32, depth=2, heads=2,
                              num_classes=10, dropout=0.0, attn_dropout=0.0, label_drop=0.0)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(std=0.2)  # zero-initialised heads would hide every difference
        g = torch.Generator().manual_seed(1)
        x, t = torch.randn(2, 16, 4, generator=g), torch.rand(2, 4, generator=g)
        if f64:
            model, x, t = model.double(), x.double(), t.double()
        with torch.no_grad():
            return model.predict(x, torch.tensor([3, 7]), t)

    def attn(f64: bool) -> torch.Tensor:  # test_perf.py: chunked keys-major attention against SDPA, head dim 16
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(5, 2, 64, 16, generator=g) for _ in range(3))
        if f64:
            return F.scaled_dot_product_attention(q.double(), k.double(), v.double())
        return attention._keys_major(q, k, v)

    def flextok(f64: bool) -> torch.Tensor:  # test_flextok.py, test_convert_flextok.py: encoder then decoder trunk
        torch.manual_seed(0)
        model = FlexTok(PRESETS["flextok-test"]).eval()
        with torch.no_grad():
            for p in model.parameters():
                torch.nn.init.normal_(p, std=0.05)
        images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
        if f64:
            model, images = model.double(), images.double()
        with torch.no_grad():
            return model.encode(images)

    rows = [("xAR velocities (width 32, depth 2)", xar), ("keys-major attention vs SDPA (64 keys)", attn),
            ("FlexTok encoder (flextok-test)", flextok)]
    try:
        from vistok.modules.mamba import Mamba

        def mamba(f64: bool) -> torch.Tensor:  # test_mamba.py: the pure PyTorch selective scan
            torch.manual_seed(0)
            block = Mamba(d_model=32).eval()
            x = torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(0))
            if f64:
                block, x = block.double(), x.double()
            with torch.no_grad():
                return block(x)

        rows.append(("Mamba block, pure PyTorch scan (64 steps)", mamba))
    except (ImportError, TypeError):  # another constructor: the row is left out, the rest still print
        pass
    head = ("float32 family, 1 thread against", "2 threads", "relative", "float64", "relative")
    print(f"{head[0]:<44} {head[1]:>10} {head[2]:>10} {head[3]:>10} {head[4]:>10}")
    for name, fn in rows:
        try:
            a, ra, b, rb = _spread(fn)
        except Exception as err:  # noqa: BLE001 - a family whose API moved is named, not fatal
            print(f"{name:<44} failed: {type(err).__name__}: {str(err)[:60]}")
            continue
        print(f"{name:<44} {a:>10.1e} {ra:>10.1e} {b:>10.1e} {rb:>10.1e}")


if __name__ == "__main__":
    main()
