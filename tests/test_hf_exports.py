"""Graphs written by the standard exporters (torch.onnx.export(dynamo=True) of Hugging Face BLOOM,
GPT-2, Llama; an int8 QDQ BERT). Fixtures: tests/data/onnx (made by tests/data/make_fixtures.py)."""
import numpy as np
import pytest

from llsim.model.load import onnx_bundle
from llsim.model.segment import run_chain, run_full, split_model, verify

from conftest import DATA

ONNX = DATA / "onnx"
# tiny configs of the fixtures (see tests/data/onnx/README.md)
CFG = {"hf_bloom_tiny": dict(H=64, L=2, F=256, V=256, kind="bloom"),
       "hf_gpt2_tiny": dict(H=64, L=2, F=256, V=256, kind="gpt2"),
       "hf_llama_tiny": dict(H=64, L=2, F=128, V=256, kv=32, kind="llama"),
       "bert_tiny_qdq": dict(H=64, L=2, F=128, V=None, kind="bert")}


@pytest.fixture(scope="module", params=list(CFG))
def bundle(request):
    return request.param, onnx_bundle(str(ONNX / f"{request.param}.onnx"), seq_len=7, batch=2)


def test_modules_are_embedding_blocks_head(bundle):
    name, b = bundle
    assert [m.name for m in b.graph.modules] == ["embedding", "block.0", "block.1", "head"]
    assert [m.kind for m in b.graph.modules] == ["embedding", "block", "block", "head"]


def test_matmul_flops_match_closed_form(bundle):
    name, b = bundle
    c = CFG[name]
    H, L, F, V = c["H"], c["L"], c["F"], c["V"]
    B, S = 2, 7
    tokens = B * S
    if c["kind"] == "llama":
        per_layer = 2 * H * H + 2 * H * c["kv"] + 3 * H * F
    else:
        per_layer = 4 * H * H + 2 * H * F
    expected = 2 * tokens * L * per_layer + 4 * L * B * S * S * H
    expected += 2 * B * H * H if c["kind"] == "bert" else 2 * tokens * H * V  # pooler / lm head
    got = sum(o.flops for m in b.graph.modules for o in m.ops if o.op_class == "matmul")
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("bounds", [[0, 1, 4], [0, 2, 4], [0, 1, 2, 3, 4]])
def test_chain_reproduces_full_model_on_random_inputs(bundle, bounds, tmp_path):
    name, b = bundle
    split_model(b.om, b.cuts, b.graph, bounds, tmp_path, b.proto)
    assert verify(b.om, tmp_path, b.proto, seed=2) <= 1e-5


def test_chain_matches_torch_reference_with_padding(bundle, tmp_path):
    """The fixture's own input (right padding in the mask) through the chain vs the stored torch output."""
    name, b = bundle
    ref = np.load(ONNX / f"{name}.npz")
    feeds = {k: ref[k] for k in b.om.input_names}
    split_model(b.om, b.cuts, b.graph, [0, 1, 2, 3, 4], tmp_path, b.proto)
    chained = run_chain(tmp_path, feeds)
    full = run_full(b.proto, feeds)
    for k in full:
        assert np.abs(full[k] - chained[k]).max() <= 1e-5
    if name != "bert_tiny_qdq":  # the quantized model is not expected to match float torch exactly
        assert np.abs(chained["logits"] - ref["logits"]).max() <= 1e-4


def test_masks_are_side_tensors_sent_directly(bundle):
    """The exporters' mask subgraphs (Shape/Gather/Slice/Expand...) must not count as activations:
    every boundary has exactly one main tensor."""
    name, b = bundle
    g = b.graph
    for boundary in range(1, g.n_modules):
        mains = [t for t in g.tensors if t.main and t.producer < boundary
                 and any(boundary <= c < g.n_modules for c in t.consumers)]
        assert len(mains) == 1, (boundary, [t.name for t in mains])
