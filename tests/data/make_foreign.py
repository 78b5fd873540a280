"""Generate the *foreign* graphs of the cost-model accuracy bench: models llsim did not build.

Hugging Face causal LMs with random weights (``torch.manual_seed(0)``, built from configs, no model
hub) of five families (BLOOM, GPT-2, Llama, Qwen2, OPT) at several widths, exported by

* ``torch.onnx.export(..., dynamo=True)`` (the exporter's optimizer on, its default),
* the legacy TorchScript exporter (``dynamo=False``) where it works,

plus quantized variants made with onnxruntime's tools: dynamic int8 (``quantize_dynamic``:
DynamicQuantizeLinear + MatMulInteger) and static QDQ (``quantize_static``, QDQ format, int8,
MinMax on seeded random token batches).

What is committed (``tests/data/foreign/``) is each graph with its weights reduced to shape-only
stubs (:mod:`llsim.model.stub`), gzipped, and ``manifest.json``; ``llsim.model.stub.load_stub``
restores deterministic random weights, so neither the bench nor the tests need torch. Timing does
not depend on the weights' values.

torch must stay out of the project's environment; run this from a separate venv::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0       # local CPU wheel
    echo torch==2.13.0 > /tmp/torch-constraint.txt
    /tmp/torchenv/bin/pip install -c /tmp/torch-constraint.txt transformers onnx onnxscript onnxruntime numpy
    /tmp/torchenv/bin/python tests/data/make_foreign.py [NAME ...]
"""
from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

try:
    import onnx
    import onnxruntime as ort
    import torch
    import transformers
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
except ImportError as exc:  # pragma: no cover - for humans
    sys.exit(f"{exc}\nRun this with the torch venv; see the docstring of {__file__}.")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from llsim.model.stub import load_stub, save_stub  # noqa: E402

OUT = HERE / "foreign"
SEED = 0
TOL = 2e-3


def cfg(family: str, hidden: int, layers: int, heads: int, ffn: int, vocab: int, kv: int | None = None):
    if family == "bloom":
        return "BloomForCausalLM", transformers.BloomConfig(vocab_size=vocab, hidden_size=hidden, n_layer=layers,
                                                            n_head=heads, use_cache=False)
    if family == "gpt2":
        return "GPT2LMHeadModel", transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers,
                                                          n_head=heads, n_inner=ffn, n_positions=1024,
                                                          bos_token_id=0, eos_token_id=0, use_cache=False)
    if family == "llama":
        return "LlamaForCausalLM", transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden,
                                                            intermediate_size=ffn, num_hidden_layers=layers,
                                                            num_attention_heads=heads, num_key_value_heads=kv or heads,
                                                            max_position_embeddings=1024, use_cache=False)
    if family == "qwen2":
        return "Qwen2ForCausalLM", transformers.Qwen2Config(vocab_size=vocab, hidden_size=hidden,
                                                            intermediate_size=ffn, num_hidden_layers=layers,
                                                            num_attention_heads=heads, num_key_value_heads=kv or heads,
                                                            max_position_embeddings=1024, use_cache=False,
                                                            tie_word_embeddings=True)
    if family == "opt":
        return "OPTForCausalLM", transformers.OPTConfig(vocab_size=vocab, hidden_size=hidden, ffn_dim=ffn,
                                                        num_hidden_layers=layers, num_attention_heads=heads,
                                                        word_embed_proj_dim=hidden, max_position_embeddings=1024,
                                                        use_cache=False, pad_token_id=1)
    raise ValueError(family)


#: name -> (family, hidden, layers, heads, ffn, vocab, kv heads, exporter, quantization)
GRAPHS = {
    "bloom-h128": ("bloom", 128, 4, 4, 512, 8192, None, "dynamo", None),
    "bloom-h512": ("bloom", 512, 4, 8, 2048, 16384, None, "dynamo", None),
    "gpt2-h128": ("gpt2", 128, 4, 4, 512, 8192, None, "dynamo", None),
    "gpt2-h512": ("gpt2", 512, 4, 8, 2048, 16384, None, "dynamo", None),
    "llama-h128": ("llama", 128, 4, 4, 344, 8192, 2, "dynamo", None),
    "llama-h512": ("llama", 512, 4, 8, 1376, 16384, 4, "dynamo", None),
    "qwen2-h192": ("qwen2", 192, 4, 6, 512, 8192, 2, "dynamo", None),
    "qwen2-h640": ("qwen2", 640, 4, 10, 1728, 16384, 2, "dynamo", None),
    "opt-h256": ("opt", 256, 4, 4, 1024, 8192, None, "dynamo", None),
    "opt-h768": ("opt", 768, 3, 12, 3072, 16384, None, "dynamo", None),
    # GPT-2 through TorchScript is left out: its ONNX output differs from torch's by ~0.8 (logits)
    "opt-h320-ts": ("opt", 320, 4, 4, 1280, 8192, None, "torchscript", None),
    "llama-h384-ts": ("llama", 384, 4, 6, 1024, 12288, 2, "torchscript", None),
    "bloom-h256-ts": ("bloom", 256, 4, 4, 1024, 8192, None, "torchscript", None),
    "llama-h512-dyn8": ("llama", 512, 4, 8, 1376, 16384, 4, "dynamo", "dynamic"),
    "gpt2-h384-dyn8": ("gpt2", 384, 4, 6, 1536, 12288, None, "dynamo", "dynamic"),
    "qwen2-h384-qdq": ("qwen2", 384, 4, 6, 1024, 8192, 2, "dynamo", "qdq"),
    "bloom-h384-qdq": ("bloom", 384, 4, 6, 1536, 8192, None, "dynamo", "qdq"),
}


def make_inputs(shape, seed, vocab):
    rng = np.random.default_rng(seed)
    b, s = shape
    return {"input_ids": rng.integers(0, vocab, size=(b, s), dtype=np.int64),
            "attention_mask": np.ones((b, s), dtype=np.int64)}


def export(model, feeds, path, exporter):
    kwargs = {k: torch.from_numpy(v) for k, v in feeds.items()}
    if exporter == "dynamo":
        dims = {"batch": torch.export.Dim("batch"), "seq": torch.export.Dim("sequence_length", min=2, max=1024)}
        dyn = {k: {0: dims["batch"], 1: dims["seq"]} for k in feeds}
        torch.onnx.export(model, (), str(path), kwargs=kwargs, dynamo=True, input_names=list(feeds),
                          output_names=["logits"], dynamic_shapes=dyn, external_data=False)
    else:
        class Wrap(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

        torch.onnx.export(Wrap(model), (kwargs["input_ids"], kwargs["attention_mask"]), str(path), dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=17,
                          dynamic_axes={n: {0: "batch", 1: "sequence_length"} for n in
                                        ("input_ids", "attention_mask", "logits")})


class RandomCalibration(CalibrationDataReader):
    def __init__(self, vocab, n=6, shape=(1, 32)):
        self._it = iter([make_inputs(shape, 100 + i, vocab) for i in range(n)])

    def get_next(self):
        return next(self._it, None)


def ort_logits(path_or_bytes, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(path_or_bytes, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def make(name: str, tmp: Path) -> dict:
    family, hidden, layers, heads, ffn, vocab, kv, exporter, quant = GRAPHS[name]
    torch.manual_seed(SEED)
    cls, config = cfg(family, hidden, layers, heads, ffn, vocab, kv)
    # the TorchScript tracer takes the eager attention (its SDPA path traces data-dependent branches)
    impl = {"attn_implementation": "eager"} if exporter == "torchscript" or family == "bloom" else {}
    model = getattr(transformers, cls)._from_config(config, **impl).eval()
    feeds = make_inputs((1, 12), SEED, vocab)
    f32 = tmp / f"{name}.f32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(model, feeds, f32, exporter)
    onnx.load(str(f32))  # external data would fail here
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    got = ort_logits(str(f32), feeds)
    diff = float(np.max(np.abs(got - want)))
    assert diff <= TOL, f"{name}: ORT vs torch {diff}"
    path = f32
    if quant == "dynamic":
        path = tmp / f"{name}.q.onnx"
        quantize_dynamic(str(f32), str(path), weight_type=QuantType.QInt8)
    elif quant == "qdq":
        pre = tmp / f"{name}.pre.onnx"
        quant_pre_process(str(f32), str(pre), auto_merge=True, skip_symbolic_shape=True)
        path = tmp / f"{name}.q.onnx"
        quantize_static(str(pre), str(path), RandomCalibration(vocab), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    proto = onnx.load(str(path))
    out = OUT / f"{name}.onnx.gz"
    save_stub(proto, out)
    # the committed stub must run at other shapes
    filled = load_stub(out).SerializeToString()
    for shape in ((1, 7), (2, 33)):
        y = ort_logits(filled, make_inputs(shape, 1, vocab))
        assert y.shape == (shape[0], shape[1], vocab), (name, y.shape)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    return {"name": name, "file": out.name, "family": family, "hidden": hidden, "layers": layers, "heads": heads,
            "kv_heads": kv or heads, "ffn": ffn, "vocab": vocab, "exporter": exporter, "quantization": quant,
            "hf_class": cls, "ort_vs_torch_max_abs_diff": diff, "nodes": len(proto.graph.node),
            "stub_bytes": out.stat().st_size, "op_types": dict(sorted(ops.items()))}


def main(names):
    OUT.mkdir(parents=True, exist_ok=True)
    mpath = OUT / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {"graphs": {}}
    manifest["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                            "onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
                            "python": sys.version.split()[0]}
    manifest["generator"] = "tests/data/make_foreign.py"
    with tempfile.TemporaryDirectory() as d:
        for name in names or GRAPHS:
            try:
                manifest["graphs"][name] = make(name, Path(d))
                print(f"{name}: {manifest['graphs'][name]['nodes']} nodes, "
                      f"{manifest['graphs'][name]['stub_bytes']} bytes", flush=True)
            except Exception as e:  # an exporter that cannot take a model: reported, not fatal
                print(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
    manifest["graphs"] = dict(sorted(manifest["graphs"].items()))
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
