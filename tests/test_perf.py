"""Performance machinery: the static KV cache, block-causal and causal attention without dense masks, FlexAttention
block masks against SDPA, and `torch.compile` (same numbers as eager, no recompilation per step).

Compile tests run dynamo through the `aot_eager` backend (graph capture, guards and AOTAutograd without inductor's
C++ code generation, which takes minutes on a busy 2-core machine); a counting backend checks how often a graph is
compiled. Inductor itself is exercised by `benchmarks/bench_xar.py --compile` and `benchmarks/gpu_check.py`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vistok.errors import VistokError
from vistok.generators.ar import AR, ARConfig
from vistok.generators.entities import block_causal_mask
from vistok.generators.sampling import ARSampleConfig, SampleConfig, sample_ar, sample_xar
from vistok.generators.xar import XAR, XARConfig
from vistok.modules.attention import BlockCausal, KVCache, attend, flex_attention, set_attention_backend
from vistok.tokenizers.flextok import PRESETS as FLEXTOK_PRESETS, FlexTok

from conftest import REPO, script_env


def tiny_xar(**overrides) -> XAR:
    cfg = dict(in_channels=4, grid=(4, 4), entity="cell", entity_size=2, width=32, depth=2, heads=2, num_classes=10,
               dropout=0.0, attn_dropout=0.0, label_drop=0.0)
    torch.manual_seed(0)
    model = XAR(XARConfig(**{**cfg, **overrides}))
    with torch.no_grad():
        model.label_emb.table.weight.normal_(std=1.0)
    return model


def tiny_gpt() -> AR:
    torch.manual_seed(0)
    model = AR(ARConfig(vocab_size=50, tokens=6, num_classes=10, width=32, depth=2, heads=2))
    with torch.no_grad():
        model.head.weight.normal_(std=0.5)
    return model.eval()


def reference_attention(q, k, v, mask):
    """Softmax attention written out, mask (L, S) boolean True = may attend."""
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v


# ------------------------------------------------------------------------------------------------------ KV cache
def test_kv_cache_is_preallocated_and_written_in_place() -> None:
    cache = KVCache(num_layers=2, capacity=5)
    k = torch.randn(3, 2, 2, 4)
    keys, values = cache.extend(0, k, -k, store=True)
    buffer = cache.keys[0]
    assert buffer.shape == (3, 2, 5, 4) and cache.lengths == [2, 0]
    assert keys.data_ptr() == buffer.data_ptr() and torch.equal(keys, k) and torch.equal(values, -k)
    # without store the new tokens sit after the cached ones but are overwritten by the next call
    k2 = torch.randn(3, 2, 1, 4)
    keys, _ = cache.extend(0, k2, k2, store=False)
    assert torch.equal(keys, torch.cat([k, k2], dim=2)) and cache.lengths[0] == 2
    k3 = torch.randn(3, 2, 3, 4)
    keys, _ = cache.extend(0, k3, k3, store=True)
    assert cache.keys[0] is buffer and keys.data_ptr() == buffer.data_ptr()  # same storage all along
    assert torch.equal(keys, torch.cat([k, k3], dim=2)) and cache.lengths == [5, 0]
    with pytest.raises(VistokError, match="holds 5 tokens"):
        cache.extend(0, k2, k2, store=False)
    cache.extend(1, k, k, store=True)
    with pytest.raises(VistokError, match="batch, heads"):
        cache.extend(1, torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4), store=True)


def test_xar_sampling_never_concatenates_the_cache(monkeypatch) -> None:
    model, seen = tiny_xar().eval(), []
    real_cat = torch.cat

    def spy(tensors, *args, **kwargs):
        seen.extend(t.shape for t in tensors if t.ndim == 4)  # (B, H, S, Dh) would be a cache concatenation
        return real_cat(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "cat", spy)
    sample_xar(model, torch.tensor([1, 2]), SampleConfig(steps=2, cfg=2.0), seed=0)
    assert seen == []


def test_xar_cached_velocities_equal_the_full_forward_at_every_layer() -> None:
    """Depth 2 + 2 and 2 heads: a cache slot shared between layers, or heads mixed up, changes the numbers."""
    model = tiny_xar().eval()
    x, labels = torch.randn(2, 16, 4), torch.tensor([3, 7])
    t = torch.tensor([[0.0, 0.0, 0.0, 0.6], [0.0, 0.0, 0.0, 0.3]])
    full = model.predict(x, labels, t)  # block-causal over all four entities in one forward
    cache = model.new_cache()
    for e in range(3):
        model.predict(x[:, 4 * e:4 * e + 4], labels, t[:, e:e + 1], first=e, cache=cache, store=True)
    assert cache.length == 12 and all(n == 12 for n in cache.lengths)
    last = model.predict(x[:, 12:], labels, t[:, 3:], first=3, cache=cache)
    torch.testing.assert_close(last, full[:, 12:], rtol=1e-5, atol=1e-5)
    # two entities at once after a cache (the dense-mask case with cached keys)
    cache = model.new_cache()
    model.predict(x[:, :8], labels, t[:, :2], first=0, cache=cache, store=True)
    torch.testing.assert_close(model.predict(x[:, 8:], labels, t[:, 2:], first=2, cache=cache), full[:, 8:],
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- attention masks
@pytest.mark.parametrize("cached", [0, 3])
def test_block_causal_chunks_equal_the_dense_mask_values_and_gradients(cached: int) -> None:
    torch.manual_seed(0)
    lengths = (2, 3, 1, 4)
    q = torch.randn(2, 3, 10, 8, requires_grad=True)
    k = torch.randn(2, 3, cached + 10, 8, requires_grad=True)
    v = torch.randn(2, 3, cached + 10, 8, requires_grad=True)
    dense = torch.cat([torch.ones(10, cached, dtype=torch.bool), block_causal_mask(lengths)], dim=1)
    ends = tuple(torch.tensor(lengths).cumsum(0).tolist())
    out = attend(q, k, v, BlockCausal(ends))
    ref = reference_attention(q, k, v, dense)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad((out * ref.detach()).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * ref.detach()).sum(), (q, k, v))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cached,new", [(0, 5), (4, 3), (4, 1)])
def test_causal_mask_with_and_without_cache(cached: int, new: int) -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 2, new, 8)
    k, v = torch.randn(2, 2, cached + new, 8), torch.randn(2, 2, cached + new, 8)
    dense = torch.ones(new, cached + new, dtype=torch.bool).tril(cached)  # query i sits at position cached + i
    torch.testing.assert_close(attend(q, k, v, "causal"), reference_attention(q, k, v, dense), rtol=1e-5, atol=1e-5)


def test_gpt_uses_is_causal_when_nothing_is_cached(monkeypatch) -> None:
    model, calls = tiny_gpt(), []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append((kwargs.get("is_causal", False), kwargs.get("attn_mask")))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    ids, labels = torch.randint(0, 50, (2, 6)), torch.tensor([1, 2])
    model(ids, labels)
    assert calls and all(causal and mask is None for causal, mask in calls)


# -------------------------------------------------------------------------------------------------- FlexAttention
needs_flex = pytest.mark.skipif(flex_attention is None, reason="FlexAttention needs torch >= 2.5")


@needs_flex
@pytest.mark.parametrize("entity,size", [("cell", 2), ("scale", 3), ("token", 1)])
@torch.no_grad()  # FlexAttention has no backward on CPU: inference only here
def test_xar_flex_block_mask_equals_sdpa(entity: str, size: int) -> None:
    model = tiny_xar(entity=entity, entity_size=size).eval()
    tokens, labels = torch.randn(3, 4, 4, 4), torch.tensor([0, 4, 9])
    t, noise = torch.rand(3, model.partition.num_entities), torch.randn(3, model.partition.num_tokens, 4)
    set_attention_backend(model, "sdpa")
    ref = model(tokens, labels, t=t, noise=noise)
    ref_samples = sample_xar(model, labels[:2], SampleConfig(steps=2, cfg=2.0), seed=1, full_recompute=True)
    set_attention_backend(model, "flex")
    assert type(model.entity_mask(0, model.partition.num_entities, 0, torch.device("cpu"))).__name__ == "BlockMask"
    torch.testing.assert_close(model(tokens, labels, t=t, noise=noise), ref, rtol=1e-5, atol=1e-6)
    samples = sample_xar(model, labels[:2], SampleConfig(steps=2, cfg=2.0), seed=1, full_recompute=True)
    torch.testing.assert_close(samples, ref_samples, rtol=1e-4, atol=1e-5)


@needs_flex
@torch.no_grad()
def test_flextok_register_mask_flex_equals_sdpa() -> None:
    torch.manual_seed(0)
    model = FlexTok(FLEXTOK_PRESETS["flextok-test"]).eval()
    with torch.no_grad():
        model.encoder.head.weight.normal_()
    x = torch.randn(2, 3, 32, 32)
    ref = model.encode(x)
    set_attention_backend(model, "flex")
    mask = model.encoder_mask(torch.device("cpu"))
    dense = mask.to_dense()[0, 0].bool()  # (Q blocks, KV blocks) at block granularity; check the mask function instead
    assert dense.any()
    torch.testing.assert_close(model.encode(x), ref, rtol=1e-5, atol=1e-5)


@needs_flex
def test_flex_training_on_cpu_fails_in_one_line_and_cuda_gets_the_compiled_kernel() -> None:
    """FlexAttention has no CPU backward: a flex training forward there says so (before torch's NotImplementedError
    deep in the backward); an eager model on CUDA calls the separately compiled kernel (checked on a GPU by
    benchmarks/gpu_check.py), on the CPU the plain function."""
    from vistok.errors import VistokError
    from vistok.modules import attention

    model = set_attention_backend(tiny_xar(entity="cell", entity_size=2).train(), "flex")
    with pytest.raises(VistokError, match="no backward on the CPU; train there with attention backend sdpa"):
        model(torch.randn(2, 4, 4, 4), torch.tensor([0, 1]))
    assert attention._flex(torch.device("cpu")) is flex_attention
    assert attention._flex(torch.device("cuda")) is attention._fused_flex() is not flex_attention


@needs_flex
def test_flex_attention_compiled_on_cpu_equals_sdpa() -> None:
    """Inference through the separately compiled FlexAttention that eager CUDA models call (`attention._fused_flex`),
    FlexAttention's fused path, at two sequence lengths (one graph each); skipped where inductor cannot build it."""
    from torch.nn.attention.flex_attention import create_block_mask

    from vistok.modules import attention

    def same_or_earlier_entity(ids):
        return lambda b, h, q, kv: ids[kv] <= ids[q]

    for length in (64, 96):
        ids = torch.arange(length) // 16  # entities of 16 tokens
        block = create_block_mask(same_or_earlier_entity(ids), None, None, length, length, device="cpu")
        q, k, v = (torch.randn(1, 2, length, 16) for _ in range(3))
        try:
            out = attention._fused_flex()(q, k, v, block_mask=block)
        except Exception as err:  # noqa: BLE001 - any inductor/toolchain failure is a reason to skip, named below
            pytest.skip(f"compiled FlexAttention does not run on this CPU build: "
                        f"{type(err).__name__}: {str(err)[:200]}")
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=ids[None, :] <= ids[:, None])
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------------------------------------- compile
# dynamo's tracing time grows with the blocks it inlines (about 2.4 against 3.7 CPU-seconds a graph here): every
# compile test uses depth 1, one block per half of the stack, which is still two attention layers with a KV-cache slot
# each (`new_cache()` holds 2 * depth), so a compiled cache shared between layers shows in the sampling equality tests;
# the eager cache test above keeps 2 + 2 blocks
class CountingBackend:
    """A torch.compile backend that counts graph compilations and runs them eagerly."""

    def __init__(self) -> None:
        self.compiles = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        return gm.forward


def test_einops_calls_enter_the_compiled_graph_as_single_ops() -> None:
    """compile_stack registers einops' ops with dynamo (vistok.graph_ops), which torch >= 2.8 would otherwise trace
    line by line at every call site: the captured graph calls `rearrange` itself, and gives eager's output."""
    import einops
    import torch._dynamo
    from torch._dynamo import trace_rules

    from vistok.graph_ops import einops_as_graph_ops

    torch._dynamo.reset()
    allowed = trace_rules._allowed_callable_ids  # as a fresh process has it: whatever ran before, einops unregistered
    for op in (einops.rearrange, einops.repeat, einops.reduce):
        if id(op) in allowed:
            allowed.remove(id(op))
    einops_as_graph_ops.cache_clear()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = tiny_xar(depth=1).eval()
    model.compile_stack(backend=capture, exact_shapes=True)
    labels = torch.tensor([1, 6])
    out = sample_xar(model, labels, SampleConfig(steps=1, cfg=1.0), seed=0, compile=True)
    ref = sample_xar(tiny_xar(depth=1).eval(), labels, SampleConfig(steps=1, cfg=1.0), seed=0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    targets = [node.target for gm in graphs for node in gm.graph.nodes if node.op == "call_function"]
    assert graphs and einops.rearrange in targets


def test_xar_compiled_training_step_equals_eager_and_compiles_once() -> None:
    """Four training steps compiled (aot_eager: AOTAutograd's backward) give eager's losses and weights from one
    graph; then a new batch size."""
    import torch._dynamo

    torch._dynamo.reset()
    eager, compiled = tiny_xar(depth=1).train(), tiny_xar(depth=1).train()
    compiled.compile(backend="aot_eager")
    tokens, labels = torch.randn(4, 4, 4, 4), torch.tensor([0, 1, 2, 3])
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, compiled)]
    torch._dynamo.utils.counters.clear()
    for _step in range(4):
        t, noise = torch.rand(4, 4), torch.randn(4, 16, 4)
        losses = []
        for m, opt in zip((eager, compiled), opts, strict=True):
            loss = m(tokens, labels, t=t, noise=noise)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # one graph for all four steps
    # a second batch size makes torch.compile trace the batch symbolically; the forward's own draws (t, noise, label
    # dropout: none passed in now) must still build (torch.randn(..., generator=None) cannot take a symbolic shape)
    for batch in (2, 3):
        loss = compiled(torch.randn(batch, 4, 4, 4), torch.arange(batch))
        loss.backward()
        assert torch.isfinite(loss)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2  # batch 3 runs batch 2's symbolic graph


def test_compiled_cpu_attention_paths() -> None:
    """On the CPU a compiled training graph computes attention as two GEMMs around a softmax over the keys of each
    query (faster there than the flash kernel's backward, benchmarks/bench_xar.py); the same compiled model without
    gradients computes it keys-major (softmax over the key axis of k q^T) at head dim 16 and keeps SDPA at head dim
    64. The test above shows the training path gives eager's losses; the next one and the compiled sampling tests
    show the keys-major path gives SDPA's outputs."""
    import torch._dynamo

    graphs = []

    def recording(gm, example_inputs):
        ops = set()
        for node in gm.graph.nodes:
            if node.op in ("call_function", "call_method"):
                dims = [*node.args[1:2], node.kwargs.get("dim")] if node.target == "softmax" else []
                ops.add(f"softmax{next(d for d in dims if d is not None)}" if dims else str(node.target))
        graphs.append(ops)
        return gm.forward

    sdpa = str(F.scaled_dot_product_attention)
    tokens, labels = torch.randn(2, 4, 4, 4), torch.tensor([0, 1])
    torch._dynamo.reset()
    model = tiny_xar(depth=1).train()  # head dim 16
    model.compile(backend=recording)
    model(tokens, labels)
    assert graphs and all(sdpa not in g and "softmax-1" in g and "softmax-2" not in g for g in graphs)
    graphs.clear()
    with torch.no_grad():  # the same compiled model without gradients: keys-major
        model(tokens, labels)
    assert graphs and all(sdpa not in g and "softmax-2" in g and "softmax-1" not in g for g in graphs)
    graphs.clear()
    torch._dynamo.reset()
    wide = tiny_xar(depth=1, width=128).eval()  # head dim 64: SDPA
    wide.compile(backend=recording)
    with torch.no_grad():
        wide(tokens, labels)
    assert graphs and all(sdpa in g and not any(op.startswith("softmax") for op in g) for g in graphs)


def test_keys_major_attention_equals_sdpa_in_chunks(monkeypatch) -> None:
    """`_keys_major` against SDPA, with the chunk budget cut so the batch splits into chunks of two rows and a last
    one of one (each row has its own keys: a chunk reading another row's keys, a softmax over the query axis or a
    lost last chunk would all show)."""
    from vistok.modules import attention

    torch.manual_seed(0)
    q, k, v = torch.randn(5, 2, 6, 16), torch.randn(5, 2, 9, 16), torch.randn(5, 2, 9, 16)
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention._keys_major(q, k, v), ref, rtol=1e-5, atol=1e-6)  # one chunk
    monkeypatch.setattr(attention, "SCORES_PER_CHUNK", 2 * 2 * 6 * 9)
    torch.testing.assert_close(attention._keys_major(q, k, v), ref, rtol=1e-5, atol=1e-6)


def test_xar_compiled_sampling_equals_eager_without_recompiling_per_step() -> None:
    """Dynamic graphs (the default past `EXACT_SHAPES_MAX_ENTITIES`), two attention layers (depth 1: one block per
    half, two cache slots): a compiled cache shared between layers would show. The exact-shape graphs are the next
    test's."""
    import torch._dynamo

    torch._dynamo.reset()
    labels = torch.tensor([1, 6])
    ref = sample_xar(tiny_xar(depth=1).eval(), labels, SampleConfig(steps=3, cfg=2.0), seed=2)
    model, backend = tiny_xar(depth=1).eval(), CountingBackend()
    assert model.partition.num_entities >= 3 and len(model.new_cache().lengths) == 2
    model.compile_stack(backend=backend, exact_shapes=False)
    model.compile_stack(backend=backend)  # idempotent
    out = sample_xar(model, labels, SampleConfig(steps=3, cfg=2.0), seed=2, compile=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    first = backend.compiles
    assert 1 <= first <= 2  # static-shape cache writes: one graph for every entity and flow step (maybe one per store)
    sample_xar(model, labels, SampleConfig(steps=6, cfg=2.0), seed=3, compile=True)  # twice the steps, other noise
    assert backend.compiles == first
    out = sample_xar(model, labels, SampleConfig(steps=3, cfg=1.0), seed=4, compile=True)  # no CFG: half the batch
    ref = sample_xar(tiny_xar(depth=1).eval(), labels, SampleConfig(steps=3, cfg=1.0), seed=4)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert backend.compiles <= first + 1  # static: the batch size becomes dynamic once


def test_xar_compiled_sampling_keeps_compiling_for_several_batch_sizes() -> None:
    """Exact-shape graphs (one layer) come per (batch size, cache length), 2E - 1 for E entities, and none per flow
    step: twice the steps add none. A second batch size (a last partial batch, a second model; here one image
    without CFG, against two with CFG: no shape in common) needs a second set, 14 graphs for 4 entities, beyond
    torch's default recompile limit of 8 (and the 10 this model allowed before), past which dynamo silently runs
    eager."""
    import torch._dynamo

    torch._dynamo.reset()
    model, backend = tiny_xar(depth=1).eval(), CountingBackend()
    graphs = 2 * model.partition.num_entities - 1
    assert graphs == 7
    model.compile_stack(backend=backend, exact_shapes=True)
    model.compile_stack(backend=backend)  # idempotent
    per_batch = []
    for labels, cfg in ((torch.tensor([1, 6]), 2.0), (torch.tensor([3]), 1.0)):
        before = backend.compiles
        out = sample_xar(model, labels, SampleConfig(steps=3, cfg=cfg), seed=len(labels), compile=True)
        ref = sample_xar(tiny_xar(depth=1).eval(), labels, SampleConfig(steps=3, cfg=cfg), seed=len(labels))
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        per_batch.append(backend.compiles - before)
        if len(per_batch) == 1:  # one graph per (cache length, store), not per flow step: twice the steps, other noise
            sample_xar(model, labels, SampleConfig(steps=6, cfg=cfg), seed=5, compile=True)
            assert backend.compiles == before + graphs
    assert per_batch == [graphs] * 2, per_batch


def test_gpt_compiled_sampling_equals_eager() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    labels = torch.tensor([0, 3, 7])
    ref = sample_ar(tiny_gpt(), labels, ARSampleConfig(cfg=2.0, temperature=1.0), seed=1)
    model, backend = tiny_gpt(), CountingBackend()
    model.compile_stack(backend=backend)
    out = sample_ar(model, labels, ARSampleConfig(cfg=2.0, temperature=1.0), seed=1, compile=True)
    assert torch.equal(out, ref)
    assert backend.compiles == 1  # static shapes: one graph for the class token and every later position


def test_flextok_compiled_decoder_equals_eager() -> None:
    import torch._dynamo

    from vistok.tokenizers import flextok_sampling as fs
    from vistok.tokenizers.flextok_sampling import DecodeConfig

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = FlexTok(FLEXTOK_PRESETS["flextok-test"]).eval()
    for p in model.parameters():  # the zero-initialised heads would make any decoder look right
        torch.nn.init.normal_(p, std=0.05)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    ids = fs.encode(model, images)
    ref = fs.decode(model, ids, DecodeConfig(steps=3), keep_k=4, seed=0)
    model.compile_stack(backend="aot_eager")
    out = fs.decode(model, ids, DecodeConfig(steps=3), keep_k=4, seed=0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_attention_backend_is_checked() -> None:
    with pytest.raises(VistokError, match="unknown attention backend"):
        set_attention_backend(tiny_xar(), "fast")


# ------------------------------------------------------------------------------------------------------- scripts
def bench_main(monkeypatch, capsys, script: str, *argv: str) -> str:
    """benchmarks/SCRIPT.py's `main()` with ARGV in this process (its folder on the path, as when run; the process
    boundary is not what these tests check) -> what it printed. Child processes it starts (`--baseline`'s workers)
    get one thread and this checkout first on their path; the process-wide malloc setting it makes is left out, and
    the thread count it sets is restored after the test (conftest's `one_thread`)."""
    import importlib

    import vistok.engine.host_memory as host_memory

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    module = importlib.import_module(script)
    for key in ("OMP_NUM_THREADS", "PYTHONPATH"):
        monkeypatch.setenv(key, script_env()[key])
    monkeypatch.setattr(host_memory, "keep_freed_memory", lambda: True)
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / f"{script}.py"), *argv])
    try:
        module.main()
    except SystemExit as stop:
        pytest.fail(f"{script}.py exited with {stop.code!r}:\n{capsys.readouterr().out[-3000:]}")
    return capsys.readouterr().out


def test_bench_xar_gpu_rows_run_on_cpu(monkeypatch, capsys) -> None:
    out = bench_main(monkeypatch, capsys, "bench_xar", "--gpu-only", "--device", "cpu", "--threads", "1")
    assert "train step, bf16, batch 4" in out and "TFLOP/step" in out
    assert "sampling, bf16, batch 4, 2 steps" in out and "images/s" in out


def test_bench_xar_baseline_corrects_by_the_issues_own_ratio(monkeypatch, capsys) -> None:
    """--baseline against this very checkout (one round, one row): both sides run in their own processes, and the
    corrected column is vistok / baseline times the issue's 144 / 138 for the B=8 training row."""
    import re

    out = bench_main(monkeypatch, capsys, "bench_xar", "--rows", "t8", "--rounds", "1", "--repeats", "1", "--threads",
                     "1", "--baseline", str(REPO))
    row = next(line for line in out.splitlines() if line.startswith("| train step B=8"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["138", "144"], cells
    ratio, corrected = (float(re.match(r"[0-9.]+", c).group()) for c in cells[5:7])
    assert abs(float(cells[4].replace(",", "")) / float(cells[3].replace(",", "")) - ratio) < 0.02, cells
    assert abs(corrected - ratio * 144 / 138) < 0.011, cells


def test_gpu_check_runs_on_cpu_and_writes_json(tmp_path, monkeypatch, capsys) -> None:
    import json

    path = tmp_path / "check.json"
    stdout = bench_main(monkeypatch, capsys, "gpu_check", "--device", "cpu", "--threads", "1", "--no-compile",
                        "--no-flex-compile", "--out", str(path))
    report = json.loads(path.read_text())
    names = [r["row"] for r in report["rows"]]
    assert report["meta"]["tiny_sizes"] and len(names) == 7, names
    kv = [r for r in report["rows"] if r["row"].startswith("static KV cache")]
    assert len(kv) == 1 and kv[0]["ok"] and kv[0]["value"] < 1e-4 and kv[0]["scale"] > 0.1, kv
    assert (any("train step" in n for n in names) and any("decode" in n for n in names)
            and any("scan" in n for n in names))
    flex = [r for r in report["rows"] if r["row"].startswith("FlexAttention")]
    assert len(flex) == 2 and all(r["ok"] and r["value"] < 1e-4 and "eager model" in r["row"] for r in flex), flex
    assert all(r["value"] > 0 for r in report["rows"] if r["unit"] != "max |diff|")
    assert "| check | measured |" in stdout


def test_compiled_training_on_cpu_draws_the_same_dropout_as_eager() -> None:
    """`compile_for_training` on the CPU (inductor, as `train.compile=true`): with attention and projection dropout
    (vistok's `Attention`, the module every model's dropout goes through), the compiled training forward draws eager's
    random numbers, so the output is eager's (inductor's own generator gives another: without `fallback_random`
    this test fails); skipped where inductor cannot build on this machine. One attention layer, not a whole model:
    inductor builds 10 C++ kernels instead of 27 (16 s instead of 43 s with an empty inductor cache)."""
    from vistok.engine.loop import compile_for_training
    from vistok.modules.attention import Attention

    torch.manual_seed(0)
    model = Attention(16, 2, attn_drop=0.3, proj_drop=0.3).train()
    x = torch.randn(2, 8, 16)

    def output() -> float:
        torch.manual_seed(7)
        with torch.no_grad():
            return model(x).square().sum().item()

    eager = output()
    torch.manual_seed(8)
    assert output() == eager and model(x).square().sum().item() != eager  # dropout is on and seeded
    compile_for_training(model, torch.device("cpu"))
    try:
        compiled = output()
    except Exception as err:  # noqa: BLE001 - any inductor/toolchain failure is a reason to skip, named below
        pytest.skip(f"inductor does not build on this machine: {type(err).__name__}: {str(err)[:200]}")
    assert compiled == pytest.approx(eager, rel=1e-5)


def test_train_compile_runs_the_trainer_compiled_with_the_same_losses_and_keys(tmp_path, monkeypatch) -> None:
    """train.compile=true: the Trainer compiles the model in place (every training script builds a Trainer); the
    losses equal an eager run and the checkpoint keeps the model's own keys."""
    from dataclasses import dataclass, field

    import torch._dynamo

    from vistok.engine.dist import setup
    from vistok.engine.loop import TrainConfig, Trainer

    real_compile, compiled = torch.nn.Module.compile, []

    def fast_compile(self, *args, **kwargs):  # aot_eager: dynamo + AOTAutograd without inductor's C++ build
        compiled.append((type(self).__name__, kwargs))
        return real_compile(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", fast_compile)

    @dataclass(frozen=True)
    class Cfg:
        train: TrainConfig = field(default_factory=TrainConfig)

    env, losses = setup("cpu"), {}
    for flag in (False, True):
        torch._dynamo.reset()
        tc = TrainConfig(run_dir=str(tmp_path / str(flag)), total_steps=3, batch_size=4, log_every=1, ckpt_every=3,
                         num_workers=0, device="cpu", compile=flag, optimizer="sgd", lr=0.1)
        model = tiny_xar(depth=1).train()
        run = Trainer(model, Cfg(tc), env)
        tokens, labels = torch.randn(4, 4, 4, 4), torch.tensor([0, 1, 2, 3])
        losses[flag] = []
        with run.logging():
            while run.step < tc.total_steps:
                g = torch.Generator().manual_seed(run.step)
                t, noise = torch.rand(4, 4, generator=g), torch.randn(4, 16, 4, generator=g)
                loss = run.ddp_model(tokens, labels, t=t, noise=noise)
                run.backward(loss)
                losses[flag].append(loss.item())
                run.finish_step()
        assert (model._compiled_call_impl is not None) == flag
    # static shapes: a new batch size never turns the steps symbolic; on the CPU, eager's random draws
    assert compiled == [("XAR", {"dynamic": False, "options": {"fallback_random": True}})]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5, abs=1e-6)
    state = torch.load(tmp_path / "True" / "last.pt", weights_only=False)
    assert not any("_orig_mod" in k for k in state["model"])


# -------------------------------------------------------------------------------------------------------- dropout
def test_cpu_dropout_is_inverted_dropout_with_the_right_rate() -> None:
    """16 random bits per element, four per 64-bit draw: every lane of a draw drops at rate p (a draw missing its sign
    bit would keep every fourth element), p is rounded to 1/65536 and the scale uses the rounded p."""
    from vistok.modules.attention import dropout

    x = torch.ones(400_000)
    assert dropout(x, 0.0) is x
    torch.manual_seed(0)
    y = dropout(x, 0.25)
    kept = y != 0
    for lane in range(4):  # consecutive elements share a draw
        assert abs(kept[lane::4].float().mean().item() - 0.75) < 0.006, lane  # zero with probability p
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))  # the rest scaled by 1 / (1 - p)
    assert abs(y.mean().item() - 1.0) < 0.01  # unbiased
    torch.manual_seed(1)
    assert not torch.equal(dropout(x, 0.25), y)  # fresh masks
    z = dropout(torch.ones(3, 5, 7, 11), 0.1)  # any shape, a size not divisible by 4, p off the 1/65536 grid
    assert z.shape == (3, 5, 7, 11) and z.min() == 0
    torch.testing.assert_close(z.unique()[1:], torch.tensor([65536 / (65536 - 6554)]))
    assert dropout(torch.ones(8, dtype=torch.bfloat16), 0.5).dtype == torch.bfloat16


def test_attention_with_dropout_on_cpu_is_the_written_out_product() -> None:
    """The CPU dropout path of an unmasked / block-causal call: softmax(q k^T / sqrt(d)), the keep-mask of `dropout`
    drawn in the same order, times v; and p = 0 gives SDPA's result."""
    from vistok.modules.attention import BlockCausal, attend, dropout

    q, k, v = torch.randn(3, 2, 2, 6, 8).unbind(0)
    torch.testing.assert_close(attend(q, k, v, None, 0.0), F.scaled_dot_product_attention(q, k, v))
    torch.manual_seed(3)
    out = attend(q, k, v, None, 0.3)
    torch.manual_seed(3)
    probs = torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5, dim=-1)
    mask = dropout(torch.ones_like(probs), 0.3)  # 0 or 1 / (1 - p)
    assert (mask == 0).any() and (mask != 0).any()
    torch.testing.assert_close(out, (probs * mask) @ v)
    # block-causal with dropout: entity e sees keys of entities <= e only (a later key's value never leaks in)
    v2 = v.clone()
    v2[:, :, 4:] += 100.0
    torch.manual_seed(4)
    a = attend(q, k, v, BlockCausal((2, 4, 6)), 0.3)
    torch.manual_seed(4)
    b = attend(q, k, v2, BlockCausal((2, 4, 6)), 0.3)
    torch.testing.assert_close(a[:, :, :4], b[:, :, :4])
    assert (a[:, :, 4:] - b[:, :, 4:]).abs().max() > 1.0


# ------------------------------------------------------------------------------------------------------ host memory
FAULT_COUNT = r"""
import resource, sys, numpy as np
from vistok.engine.host_memory import keep_freed_memory
def faults_per_block(rounds=4):  # page faults of allocating, filling and freeing one 64 MiB block, round by round
    out = []
    for _ in range(rounds):
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = np.full(1 << 23, 1.0)
        del block
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
    return out
default = faults_per_block()
applied = keep_freed_memory()
print(applied, "torch" in sys.modules, *default, *faults_per_block())
"""


def test_keep_freed_memory_ends_the_page_faults_of_a_reused_block() -> None:
    """glibc maps a block above its mmap threshold (at most 32 MiB however it adapts) afresh and unmaps it on free,
    so every reuse of a 64 MiB activation faults its pages in again; with freed blocks kept, the first round maps it
    and the next ones fault next to never. A setting that raised only one of the two thresholds fails here (the
    untrimmed heap top or the mapped block faults each round). In a fresh process: the setting is process-wide. What
    it saves on a training step is measured by `python benchmarks/bench_xar.py --rows t32 --compile
    --malloc-default`."""
    proc = subprocess.run([sys.executable, "-c", FAULT_COUNT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    applied, imported_torch, *faults = proc.stdout.split()
    default, kept = [int(f) for f in faults[:4]], [int(f) for f in faults[4:]]
    assert imported_torch == "False"  # the module is plain ctypes: the CLI may call it before importing torch
    if applied != "True":
        pytest.skip("not glibc: keep_freed_memory does nothing here")
    if min(default) < 16:
        pytest.skip(f"this C library does not map 64 MiB blocks afresh ({default}): nothing to compare")
    assert max(kept[1:]) < statistics.median(default) / 5, (default, kept)


def test_trainer_and_cli_keep_freed_memory(monkeypatch, tmp_path) -> None:
    """The training loop (on the CPU) and the CLI set it for their process; VISTOK_KEEP_FREED_MEMORY=0 opts out."""
    from dataclasses import dataclass, field

    import vistok.cli
    import vistok.engine.host_memory as host_memory
    import vistok.engine.loop as loop
    from vistok.engine.dist import setup

    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda: calls.append("trainer"))
    monkeypatch.setattr(vistok.cli, "keep_freed_memory", lambda: calls.append("cli"))

    @dataclass(frozen=True)
    class Cfg:
        train: loop.TrainConfig = field(default_factory=loop.TrainConfig)

    tc = loop.TrainConfig(run_dir=str(tmp_path / "run"), total_steps=1, batch_size=4, num_workers=0, device="cpu")
    loop.Trainer(tiny_xar(), Cfg(tc), setup("cpu"))
    assert vistok.cli.main(["models"]) == 0
    assert calls == ["trainer", "cli"]
    monkeypatch.setattr(host_memory, "_applied", None)
    monkeypatch.setenv("VISTOK_KEEP_FREED_MEMORY", "0")
    assert host_memory.keep_freed_memory() is False
