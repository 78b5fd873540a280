"""Zoo configs and the analytical graph against published numbers and closed-form expectations."""

import pytest

from llsim.model.analytic import analytic_graph
from llsim.model.zoo import ZOO, get_config
from llsim.errors import LLSimError

# Parameter counts from the models' cards (Hugging Face), not from our code.
PUBLISHED = {
    "bloom-560m": 559_214_592,
    "bloom-1b1": 1_065_314_304,
    "bloom-3b": 3_002_557_440,
    "gpt2-small": 124_439_808,
    "llama-3.2-1b": 1_235_814_400,
}


@pytest.mark.parametrize("name,count", PUBLISHED.items())
def test_params_match_published(name, count):
    g = analytic_graph(get_config(name), seq_len=8)
    assert abs(g.total_params - count) / count < 0.01


def test_every_real_model_within_1pct_of_its_card():
    for cfg in ZOO.values():
        if cfg.published_params:
            g = analytic_graph(cfg, 4)
            assert abs(g.total_params - cfg.published_params) / cfg.published_params < 0.01, cfg.name


@pytest.mark.parametrize("name", ["bloom-560m", "gpt2-medium", "llama-3.2-1b", "llama-2-7b"])
@pytest.mark.parametrize("seq,batch", [(32, 1), (128, 2)])
def test_flops_match_closed_form(name, seq, batch):
    """2 x (matmul weights) x tokens + 4 x L x B x S^2 x (heads x head_dim) dominates; elementwise work
    is a few percent at most at these sizes."""
    cfg = get_config(name)
    g = analytic_graph(cfg, seq, batch)
    H, L, F, V = cfg.hidden, cfg.layers, cfg.ffn, cfg.vocab
    kv = cfg.n_kv_heads * cfg.head_dim
    if cfg.family == "llama":
        per_layer = H * H * 2 + 2 * H * kv + 3 * H * F
    else:
        per_layer = 4 * H * H + 2 * H * F
    tokens = batch * seq
    expected = 2 * tokens * (L * per_layer + H * V) + 4 * L * batch * seq * seq * cfg.heads * cfg.head_dim
    assert g.total_flops == pytest.approx(expected, rel=0.05)
    assert g.total_flops >= expected  # the rest is elementwise work, never negative


def test_kv_decode_step_scales_with_context_not_prompt():
    cfg = get_config("llama-3.2-1b")
    short = analytic_graph(cfg, seq_len=1, past_len=64)
    long = analytic_graph(cfg, seq_len=1, past_len=1024)
    prefill = analytic_graph(cfg, seq_len=1024)
    # one new token: matmul work identical, attention work grows with context
    assert long.total_flops > short.total_flops
    assert long.total_flops < prefill.total_flops / 100
    blk = long.modules[1]
    assert blk.kv_bytes_per_token == 2 * cfg.n_kv_heads * cfg.head_dim * 4


def test_modules_and_boundary_bytes():
    cfg = get_config("bloom-1b1")
    g = analytic_graph(cfg, seq_len=64, batch=2)
    assert [m.kind for m in g.modules] == ["embedding"] + ["block"] * cfg.layers + ["head"]
    hidden = 2 * 64 * cfg.hidden * 4
    bias = cfg.heads * 64 * 64 * 4  # ALiBi + causal mask, shared by all blocks
    # after the embedding: hidden state + the shared attention bias; between blocks the same
    assert g.modules[0].output_bytes == hidden + bias
    assert g.modules[5].output_bytes == hidden + bias
    # after the last block only the hidden state remains (bias has no later consumer)
    assert g.modules[-2].output_bytes == hidden
    assert g.modules[-1].output_bytes == 2 * 64 * cfg.vocab * 4


def test_dependency_maps_send_side_tensors_directly():
    g = analytic_graph(get_config("llama-3.2-1b"), seq_len=16)
    maps = g.dependency_maps([0, 4, 9, 13, 18])
    seq = {(r.name, r.src_segment, r.dst_segment) for r in maps.sequential}
    res = {(r.name, r.src_segment, r.dst_segment) for r in maps.residual}
    assert ("hidden.3", 0, 1) in seq and ("hidden.8", 1, 2) in seq and ("hidden.12", 2, 3) in seq
    for side in ("attn_bias", "rope_cos", "rope_sin"):
        assert (side, 0, 1) in seq
        assert (side, 0, 2) in res and (side, 0, 3) in res  # from the producer, never relayed
        assert not any(r[0] == side and r[1] != 0 for r in seq | res)


def test_tied_embedding_counted_once_in_total_but_held_by_head():
    cfg = get_config("gpt2-small")
    g = analytic_graph(cfg, 8)
    assert g.modules[-1].params >= cfg.vocab * cfg.hidden
    assert sum(m.params for m in g.modules) == g.total_params + cfg.vocab * cfg.hidden


def test_unknown_model_name():
    with pytest.raises(LLSimError, match="unknown model"):
        get_config("bloom-9000")


def test_big_models_analyse_without_weights():
    import tracemalloc

    tracemalloc.start()
    g = analytic_graph(get_config("bloom-7b1"), seq_len=512)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert g.total_params > 7e9
    assert peak < 20e6  # a few MB of Python objects, not 28 GB of weights
