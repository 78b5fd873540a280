"""KV-cache decoders: the builder's past/present graphs against the recompute graphs and the analytical
graph, cuts that keep each block's cache inside its segment, and chains that decode for real."""
from __future__ import annotations

import json
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from llsim.errors import LLSimError
from llsim.model.analytic import analytic_graph
from llsim.model.builder import build_model, save_model
from llsim.model.cuts import analyse_cuts, model_graph_from_onnx
from llsim.model.kv import kv_dim_overrides, state_pairs
from llsim.model.load import onnx_bundle
from llsim.model.onnx_graph import analyse
from llsim.model.segment import run_chain, split_model, verify
from llsim.model.zoo import get_config

TINY = ["tiny-bloom", "tiny-gpt2", "tiny-llama"]


def _sess(proto):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _empty_past(cfg, batch=1):
    return {f"past_key_values.{i}.{t}": np.zeros((batch, cfg.n_kv_heads, 0, cfg.head_dim), np.float32)
            for i in range(cfg.layers) for t in ("key", "value")}


@pytest.mark.parametrize("name", TINY)
def test_kv_model_has_the_recompute_models_weights(name):
    cfg = get_config(name)
    a = {t.name: t.raw_data for t in build_model(cfg, seed=5).graph.initializer}
    b = {t.name: t.raw_data for t in build_model(cfg, seed=5, kv_cache=True).graph.initializer}
    assert a == b


@pytest.mark.parametrize("name", TINY + ["small-llama"])
def test_decode_steps_reproduce_recompute_logits(name):
    """Prefill a batch of 2, then decode 6 tokens one at a time with the cache: every step's logits equal
    the recompute model's on the whole sequence."""
    cfg = get_config(name)
    rec, kv = _sess(build_model(cfg)), _sess(build_model(cfg, kv_cache=True))
    rng = np.random.default_rng(1)
    seq = rng.integers(0, cfg.vocab, (2, 5)).astype(np.int64)
    names = [o.name for o in kv.get_outputs()]
    out = kv.run(None, {"input_ids": seq, "attention_mask": np.ones_like(seq), **_empty_past(cfg, 2)})
    np.testing.assert_allclose(out[0], rec.run(None, {"input_ids": seq})[0], atol=2e-5)
    for _ in range(6):
        tok = rng.integers(0, cfg.vocab, (2, 1)).astype(np.int64)
        seq = np.concatenate([seq, tok], 1)
        past = {n.replace("present", "past_key_values"): v for n, v in zip(names[1:], out[1:])}
        out = kv.run(None, {"input_ids": tok, "attention_mask": np.ones_like(seq), **past})
        assert out[1].shape[2] == seq.shape[1]
        np.testing.assert_allclose(out[0][:, -1], rec.run(None, {"input_ids": seq})[0][:, -1], atol=2e-5)


@pytest.mark.parametrize("name", TINY)
def test_padding_in_the_attention_mask_hides_those_keys(name):
    """Tokens the attention mask hides (left padding) do not change the logits of the visible ones."""
    cfg = get_config(name)
    kv = _sess(build_model(cfg, kv_cache=True))
    rng = np.random.default_rng(2)
    ids = rng.integers(0, cfg.vocab, (1, 7)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    other = ids.copy()
    other[0, :3] = (ids[0, :3] + 17) % cfg.vocab  # different tokens where the mask hides them
    a = kv.run(["logits"], {"input_ids": ids, "attention_mask": mask, **_empty_past(cfg)})[0]
    b = kv.run(["logits"], {"input_ids": other, "attention_mask": mask, **_empty_past(cfg)})[0]
    np.testing.assert_allclose(a[0, 3:], b[0, 3:], atol=1e-5)


@pytest.mark.parametrize("name", TINY + ["small-llama"])
@pytest.mark.parametrize("past", [1, 9])
def test_kv_graph_costs_agree_with_analytic_decode_step(name, past):
    """The ONNX cache graph at (seq 1, past P) against the analytical graph's decode step: identical
    modules, parameters, matmul/softmax/norm/reduce FLOPs, block elementwise FLOPs and KV bytes per token."""
    cfg = get_config(name)
    proto = build_model(cfg, kv_cache=True)
    om = analyse(proto, 1, 1, dim_overrides=kv_dim_overrides(proto, 1, 1, past))
    g = model_graph_from_onnx(om)
    a = analytic_graph(cfg, 1, 1, past)
    assert [m.name for m in g.modules] == [m.name for m in a.modules]
    assert g.total_params == a.total_params
    for mo, ma in zip(g.modules, a.modules):
        assert mo.params == ma.params, mo.name
        assert mo.kv_bytes_per_token == ma.kv_bytes_per_token, mo.name
        classes = ["matmul", "softmax", "norm", "reduce"] + (["elementwise"] if mo.kind != "embedding" else [])
        for cls in classes:
            fo = sum(o.flops for o in mo.ops if o.op_class == cls)
            fa = sum(o.flops for o in ma.ops if o.op_class == cls)
            assert fo == pytest.approx(fa, rel=1e-9), (mo.name, cls)


@pytest.mark.parametrize("name", TINY)
def test_kv_state_never_crosses_a_cut(name):
    """Brute force over every cut the analysis calls valid: no cache input is read on both sides, and
    none is among the boundary tensors routed between segments."""
    b = onnx_bundle(name, seq_len=4, kv_cache=True, past_len=3)
    ca, om = b.cuts, b.om
    assert set(ca.state) == {p.input for p in state_pairs(b.proto)} and len(ca.state) == 2 * get_config(name).layers
    nodes = [om.nodes[i] for i in ca.exec_nodes]
    for p in ca.valid_cuts:
        before = {x for n in nodes[:p] for x in n.input}
        after = {x for n in nodes[p:] for x in n.input}
        assert not (before & after & set(ca.state))
    names = {t.name for t in b.graph.tensors}
    assert not names & (set(ca.state) | set(ca.state.values()))
    # the routes are the recompute model's: one hidden state per cut plus the side tensors
    r = onnx_bundle(name, seq_len=4)
    assert [m.name for m in b.graph.modules] == [m.name for m in r.graph.modules]
    assert len(b.graph.tensors) == len(r.graph.tensors)


def _random_boundaries(rng, n_modules):
    k = int(rng.integers(1, n_modules))
    inner = sorted(rng.choice(np.arange(1, n_modules), size=k - 1, replace=False).tolist()) if k > 1 else []
    return [0] + inner + [n_modules]


@pytest.mark.parametrize("name", TINY)
def test_split_kv_chain_decodes_like_the_whole_model(name, tmp_path):
    """Random cuts (seeded generator): each segment lists exactly the cache of the blocks it runs, and a
    chain of segments prefilled then decoded with its own state gives the whole model's greedy tokens."""
    cfg = get_config(name)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    full = _sess(build_model(cfg, kv_cache=True))
    for trial in range(3):
        b = onnx_bundle(name, seq_len=5, kv_cache=True)
        bounds = _random_boundaries(rng, b.graph.n_modules)
        d = tmp_path / f"t{trial}"
        res = split_model(b.om, b.cuts, b.graph, bounds, d, b.proto)
        plan = json.loads((d / "plan.json").read_text())
        assert plan["kv_cache"] is True and plan["graph_inputs"] == ["input_ids", "attention_mask"]
        assert plan["graph_outputs"] == ["logits"]
        for seg in plan["segments"]:
            blocks = [int(m.split(".")[1]) for m in seg["module_names"] if m.startswith("block.")]
            assert sorted(st["input"] for st in seg["state"]) == sorted(
                f"past_key_values.{i}.{t}" for i in blocks for t in ("key", "value"))
            assert all(st["output"] == st["input"].replace("past_key_values", "present") for st in seg["state"])
            m = onnx.load(str(d / seg["file"]))
            assert {st["input"] for st in seg["state"]} <= {i.name for i in m.graph.input}
            assert {st["output"] for st in seg["state"]} <= {o.name for o in m.graph.output}
        assert len(res.files) == len(bounds) - 1
        prompt = rng.integers(0, cfg.vocab, (1, 6)).astype(np.int64)
        chain_tok, full_tok = [], []
        ids, seq, state, past = prompt, prompt, {}, _empty_past(cfg)
        fids = prompt
        for _ in range(5):
            mask = np.ones_like(seq)
            out = run_chain(d, {"input_ids": ids, "attention_mask": mask}, state)
            state = {k.replace("present", "past_key_values"): v for k, v in out.items() if k.startswith("present")}
            t = int(np.argmax(out["logits"][0, -1]))
            fo = full.run(None, {"input_ids": fids, "attention_mask": mask, **past})
            past = {o.name.replace("present", "past_key_values"): v for o, v in zip(full.get_outputs()[1:], fo[1:])}
            ft = int(np.argmax(fo[0][0, -1]))
            chain_tok.append(t)
            full_tok.append(ft)
            ids = fids = np.asarray([[t]], np.int64)
            seq = np.concatenate([seq, ids], 1)
        assert chain_tok == full_tok, bounds


@pytest.mark.parametrize("name", TINY)
def test_verify_compares_presents_too(name, tmp_path):
    b = onnx_bundle(name, seq_len=4, kv_cache=True, past_len=2, batch=2)
    split_model(b.om, b.cuts, b.graph, [0, 2, b.graph.n_modules], tmp_path, b.proto)
    assert verify(b.om, tmp_path, b.proto, seed=3) <= 1e-5


def test_a_kv_model_file_from_outside_the_zoo_is_cut_the_same_way(tmp_path):
    """The cache model written to a file is a user ONNX with past/present tensors: detected from the
    file alone, analysed at consistent dims and cut with its state kept per segment."""
    cfg = get_config("tiny-llama")
    path = save_model(build_model(cfg, kv_cache=True), tmp_path / "user_kv.onnx")
    b = onnx_bundle(str(path), seq_len=3, kv_cache=True, past_len=4)
    assert b.om.dims["past"] == 4 and b.om.dims["past+seq"] == 7
    res = split_model(b.om, b.cuts, b.graph, [0, 2, 4, 5], tmp_path / "segs", b.proto)
    assert sum(len(s["state"]) for s in res.plan["segments"]) == 2 * cfg.layers
    assert verify(b.om, tmp_path / "segs", b.proto) <= 1e-5


def test_kv_cache_on_a_model_without_one_is_a_clear_error(tmp_path):
    path = save_model(build_model(get_config("tiny-gpt2")), tmp_path / "plain.onnx")
    with pytest.raises(LLSimError, match="recompute mode only"):
        onnx_bundle(str(path), seq_len=4, kv_cache=True)
    # the same file runs in recompute mode
    b = onnx_bundle(str(path), seq_len=4)
    assert not b.cuts.state


def test_recompute_models_have_no_state():
    for name in TINY:
        proto = build_model(get_config(name))
        assert state_pairs(proto) == []
        assert analyse_cuts(analyse(proto, 1, 4)).state == {}


def test_state_pairs_match_common_exporter_names():
    from onnx import TensorProto, helper

    def model(ins, outs):
        nodes = [helper.make_node("Identity", [i], [o]) for i, o in zip(ins, outs)]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(i, TensorProto.FLOAT, ["b", 2, "past_len", 4])
                                           for i in ins],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs])
        return helper.make_model(g)

    m = model(["past_key_values.0.key", "past.1.value", "past_key_2", "pastless_unrelated"],
              ["present.0.key", "present.1.value", "present_key_2", "other"])
    pairs = state_pairs(m)
    assert [(p.input, p.output, p.axis) for p in pairs] == [
        ("past_key_values.0.key", "present.0.key", 2), ("past.1.value", "present.1.value", 2),
        ("past_key_2", "present_key_2", 2)]
