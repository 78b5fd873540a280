"""Generate ONNX test fixtures made by the *standard exporters* (not by llsim).

What it makes (into ``tests/data/onnx/``):

* ``hf_bloom_tiny.onnx``, ``hf_gpt2_tiny.onnx``, ``hf_llama_tiny.onnx``:
  Hugging Face ``BloomForCausalLM`` / ``GPT2LMHeadModel`` / ``LlamaForCausalLM``
  built from tiny configs with random weights (``torch.manual_seed(0)``, no
  model hub), ``use_cache=False``, eval mode, exported with
  ``torch.onnx.export(..., dynamo=True)`` (exporter optimizer on, the default),
  inputs ``input_ids`` / ``attention_mask`` with symbolic dims ``batch`` and
  ``sequence_length``, output ``logits``; weights embedded in the file.
* ``bert_tiny_qdq.onnx``: a tiny ``BertModel`` exported the same way (inputs
  ``input_ids``, ``attention_mask``, ``token_type_ids``; outputs
  ``last_hidden_state``, ``pooler_output``), run through
  ``onnxruntime.quantization.shape_inference.quant_pre_process`` (with
  ``auto_merge=True``) and then
  ``quantize_static`` (QDQ format, int8 activations and weights, seeded random
  calibration data), so it holds QuantizeLinear/DequantizeLinear nodes.
* ``<name>.npz`` next to each ``.onnx``: a seeded random input (batch 2,
  seq 7; ``attention_mask`` has right padding on row 1) and reference outputs:
  the torch outputs for the three LMs; for the QDQ model, the onnxruntime
  output of the *float* model before quantization (the quantized model is not
  expected to match it exactly).
* ``README.md``: fixtures, tool versions, configs and the regeneration command.

Every fixture is checked with onnxruntime (CPU) at two (batch, seq) shapes; for
the float LMs the ORT output must match torch within 1e-4 max abs diff. A
summary (sizes, opset, op-type histogram, I/O names and dims) is printed.

The outputs are committed, so the tests need neither torch nor this script.
torch must never enter the project's own environment: run this script from a
separate venv::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0       # local CPU wheel
    echo torch==2.13.0 > /tmp/torch-constraint.txt
    /tmp/torchenv/bin/pip install -c /tmp/torch-constraint.txt \\
        transformers onnx onnxscript onnxruntime numpy
    /tmp/torchenv/bin/python tests/data/make_fixtures.py
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

try:
    import torch
    import transformers
    import onnx
    import onnxscript
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
except ImportError as exc:  # pragma: no cover - only for humans running it
    sys.exit(f"{exc}\nRun this with the torch venv; see the docstring of {__file__}.")

HERE = Path(__file__).resolve().parent
OUT = HERE / "onnx"
SEED = 0
REF_SHAPE = (2, 7)  # stored in the .npz
ALT_SHAPE = (3, 11)  # second shape checked with onnxruntime only at generation
TOL = 1e-4
MAX_BYTES = 1_500_000

DIMS = {"batch": torch.export.Dim("batch"), "seq": torch.export.Dim("sequence_length")}

LM_FIXTURES = {
    "hf_bloom_tiny": (
        "BloomForCausalLM",
        "BloomConfig",
        dict(vocab_size=256, hidden_size=64, n_layer=2, n_head=4, use_cache=False),
    ),
    "hf_gpt2_tiny": (
        "GPT2LMHeadModel",
        "GPT2Config",
        dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_inner=256,
             n_positions=128, bos_token_id=0, eos_token_id=0, use_cache=False),
    ),
    "hf_llama_tiny": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(vocab_size=256, hidden_size=64, intermediate_size=128,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, use_cache=False),
    ),
}

BERT_NAME = "bert_tiny_qdq"
BERT_CONFIG = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=128,
                   max_position_embeddings=128, type_vocab_size=2)


def make_inputs(shape, seed, vocab, token_types=False):
    """Seeded random ids; the last row is right-padded (mask zeros at the end)."""
    rng = np.random.default_rng(seed)
    b, s = shape
    feeds = {
        "input_ids": rng.integers(0, vocab, size=(b, s), dtype=np.int64),
        "attention_mask": np.ones((b, s), dtype=np.int64),
    }
    feeds["attention_mask"][-1, s - 2:] = 0
    if token_types:
        tt = np.zeros((b, s), dtype=np.int64)
        tt[:, s // 2:] = 1
        feeds["token_type_ids"] = tt
    return feeds


def export(model, feeds, path, output_names):
    kwargs = {k: torch.from_numpy(v) for k, v in feeds.items()}
    dyn = {k: {0: DIMS["batch"], 1: DIMS["seq"]} for k in feeds}
    # kwargs, not positional args: Bloom's second positional is past_key_values.
    torch.onnx.export(
        model, (), str(path), kwargs=kwargs, dynamo=True,
        input_names=list(feeds), output_names=output_names,
        dynamic_shapes=dyn, external_data=False,
    )
    if Path(str(path) + ".data").exists():
        raise RuntimeError(f"{path}: exporter wrote external data")
    onnx.checker.check_model(str(path), full_check=True)


def torch_outputs(model, feeds, output_names):
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return {n: out[n].numpy() for n in output_names}


def ort_run(path, feeds):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def max_diff(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def make_lm(name, model_cls, cfg_cls, cfg_kwargs):
    torch.manual_seed(SEED)
    cfg = getattr(transformers, cfg_cls)(**cfg_kwargs)
    model = getattr(transformers, model_cls)(cfg).eval()
    path = OUT / f"{name}.onnx"
    checks = [f"transformers attention implementation: {model.config._attn_implementation}"]
    feeds = make_inputs(REF_SHAPE, SEED, cfg.vocab_size)
    export(model, feeds, path, ["logits"])
    ref = torch_outputs(model, feeds, ["logits"])
    np.savez(OUT / f"{name}.npz", **feeds, **ref)
    for i, shape in enumerate((REF_SHAPE, ALT_SHAPE)):
        f = make_inputs(shape, SEED + i, cfg.vocab_size)
        got = ort_run(path, f)
        want = torch_outputs(model, f, ["logits"])
        d = max_diff(got["logits"], want["logits"])
        assert got["logits"].shape == want["logits"].shape
        assert d <= TOL, f"{name} {shape}: ORT vs torch max abs diff {d}"
        checks.append(f"ORT check {shape}: ORT vs torch max|diff| {d:.2e}")
    return path, checks


class RandomCalibration(CalibrationDataReader):
    def __init__(self, vocab, n=8, shape=(2, 16), seed=SEED + 100):
        self._it = iter(
            [make_inputs(shape, seed + i, vocab, token_types=True) for i in range(n)]
        )

    def get_next(self):
        return next(self._it, None)


def make_bert_qdq(tmp):
    torch.manual_seed(SEED)
    cfg = transformers.BertConfig(**BERT_CONFIG)
    model = transformers.BertModel(cfg).eval()
    checks = [f"transformers attention implementation: {model.config._attn_implementation}"]
    outs = ["last_hidden_state", "pooler_output"]
    feeds = make_inputs(REF_SHAPE, SEED, cfg.vocab_size, token_types=True)
    f32 = Path(tmp) / "bert_tiny_f32.onnx"
    export(model, feeds, f32, outs)
    # the float model under ORT must agree with torch too
    for i, shape in enumerate((REF_SHAPE, ALT_SHAPE)):
        f = make_inputs(shape, SEED + i, cfg.vocab_size, token_types=True)
        got, want = ort_run(f32, f), torch_outputs(model, f, outs)
        for n in outs:
            assert max_diff(got[n], want[n]) <= TOL, (n, shape)
    pre = Path(tmp) / "bert_tiny_pre.onnx"
    # auto_merge: ORT's symbolic shape inference cannot otherwise unify
    # `sequence_length` with the exporter's `Min(128, sequence_length)` (the
    # sliced position-embedding table) and fails with "Incomplete symbolic
    # shape inference".
    quant_pre_process(str(f32), str(pre), auto_merge=True)
    path = OUT / f"{BERT_NAME}.onnx"
    quantize_static(
        str(pre), str(path), RandomCalibration(cfg.vocab_size),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
    )
    onnx.checker.check_model(str(path), full_check=True)
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"], ops
    ref = ort_run(f32, feeds)  # float reference, before quantization
    np.savez(OUT / f"{BERT_NAME}.npz", **feeds, **ref)
    for i, shape in enumerate((REF_SHAPE, ALT_SHAPE)):
        f = make_inputs(shape, SEED + i, cfg.vocab_size, token_types=True)
        got, want = ort_run(path, f), ort_run(f32, f)
        parts = []
        for n in outs:
            assert got[n].shape == want[n].shape, (n, got[n].shape, want[n].shape)
            assert np.all(np.isfinite(got[n]))
            parts.append(f"{n} {max_diff(got[n], want[n]):.3f}")
        checks.append(f"ORT check {shape}: QDQ vs float max|diff| (informational) " + ", ".join(parts))
    return path, checks


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def describe(path, checks):
    m = onnx.load(str(path))
    size = path.stat().st_size
    assert size <= MAX_BYTES, f"{path.name} is {size} bytes"
    assert not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer
    )
    ops = collections.Counter(n.op_type for n in m.graph.node)
    lines = [
        f"### `{path.name}`",
        "",
        f"- size: {size} bytes (`{path.stem}.npz`: "
        f"{(path.parent / (path.stem + '.npz')).stat().st_size} bytes)",
        "- opset: " + ", ".join(
            f"{o.domain or 'ai.onnx'} {o.version}" for o in m.opset_import),
        f"- nodes: {len(m.graph.node)}, initializers: {len(m.graph.initializer)}, "
        f"local functions: {len(m.functions)}",
        "- inputs: " + ", ".join(f"`{v.name}` {dims(v)}" for v in m.graph.input),
        "- outputs: " + ", ".join(f"`{v.name}` {dims(v)}" for v in m.graph.output),
        "- op types: " + ", ".join(f"{k} {v}" for k, v in sorted(
            ops.items(), key=lambda kv: (-kv[1], kv[0]))),
    ] + [f"- {c}" for c in checks]
    return "\n".join(lines)


def write_readme(sections):
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    }
    cfgs = [f"- `{n}`: `{m}({c}(**{kw!r}))`" for n, (m, c, kw) in LM_FIXTURES.items()]
    cfgs.append(f"- `{BERT_NAME}`: `BertModel(BertConfig(**{BERT_CONFIG!r}))`")
    text = f"""# ONNX fixtures from the standard exporters

Generated by `tests/data/make_fixtures.py` (do not edit by hand). These graphs
were written by `torch.onnx.export(..., dynamo=True)` (and, for the QDQ model,
onnxruntime's quantization tools), not by llsim's own builder, so they carry the
exporters' idioms: Shape/Gather/Slice/Expand/Concat mask and position
subgraphs, folded constants, `val_*` tensor names, symbolic dims.

All models have random weights (`torch.manual_seed({SEED})`, built from
configs; no model hub). Weights are embedded (no external data).

| file | what |
| --- | --- |
| `hf_bloom_tiny.onnx` | `BloomForCausalLM`, inputs `input_ids`, `attention_mask` -> `logits` |
| `hf_gpt2_tiny.onnx` | `GPT2LMHeadModel`, same I/O |
| `hf_llama_tiny.onnx` | `LlamaForCausalLM` (4 q heads, 2 kv heads), same I/O |
| `bert_tiny_qdq.onnx` | `BertModel`, inputs `input_ids`, `attention_mask`, `token_type_ids` -> `last_hidden_state`, `pooler_output`; `quant_pre_process(auto_merge=True)` then `quantize_static` (QDQ, activations QInt8, weights QInt8, MinMax on 8 seeded random batches of shape (2, 16)) |
| `<name>.npz` | arrays named after the model inputs and outputs: a seeded random input of shape {REF_SHAPE} (int64; `attention_mask` all ones except the last 2 positions of the last row, i.e. right padding) and the reference outputs |

Reference outputs in the `.npz`: for the three LMs, torch's `logits` (ORT matches
within {TOL:g} max abs diff, checked at generation for shapes {REF_SHAPE} and
{ALT_SHAPE}). For `bert_tiny_qdq`, the onnxruntime outputs of the *float* BERT
before quantization: the quantized model is **not** expected to match them
exactly (differences of a few 1e-2 are normal).

Export details: `torch.onnx.export(model, (), f, kwargs={{...}}, dynamo=True,
input_names=..., output_names=..., dynamic_shapes={{name: {{0: Dim("batch"),
1: Dim("sequence_length")}}}}, external_data=False)`, exporter defaults otherwise
(optimizer on, default opset). Inputs are passed as kwargs because
`BloomForCausalLM.forward`'s second positional parameter is `past_key_values`.

## Things an ONNX reader should expect here

- `value_info` dims are not just the input names: the exporter writes sympy
  expressions as `dim_param`, e.g. `4*batch`, `batch*sequence_length`,
  `((sequence_length**2)//sequence_length)`.
- `bert_tiny_qdq.onnx` lists many unused opset imports (`com.microsoft`,
  `ai.onnx.ml`, `ai.onnx.training`, `org.pytorch.aten`, ...), added by the
  onnxruntime optimizer inside `quant_pre_process`; its nodes use only the
  default domain. Its weights are int8 initializers feeding DequantizeLinear
  (hence more DequantizeLinear than QuantizeLinear nodes).
- Weights are partly constant-folded by the exporter's optimizer (e.g.
  pre-transposed, named `val_*`); Bloom/GPT-2 tie `lm_head` to the embedding.
- `quant_pre_process` needs `auto_merge=True`: without it ORT's symbolic shape
  inference fails ("Incomplete symbolic shape inference") because it cannot
  unify `sequence_length` with `Min(128, sequence_length)` from the sliced
  position-embedding table.

## Versions

""" + "\n".join(f"- {k} {v}" for k, v in versions.items()) + """

## Configs (all with `.eval()`)

""" + "\n".join(cfgs) + """

## Fixtures (sizes, opsets, I/O dims, op-type histograms)

""" + "\n\n".join(sections) + """

## Regenerate

torch must stay out of the project's environment; use a separate venv:

```sh
python3 -m venv /tmp/torchenv
/tmp/torchenv/bin/pip install torch==2.13.0      # the local CPU wheel
echo torch==2.13.0 > /tmp/torch-constraint.txt
/tmp/torchenv/bin/pip install -c /tmp/torch-constraint.txt \\
    transformers onnx onnxscript onnxruntime numpy
/tmp/torchenv/bin/python tests/data/make_fixtures.py
```

With other versions of the tools the graphs (node counts, names, opset) will
differ; the tests should not depend on exact node counts.
"""
    (OUT / "README.md").write_text(text)


def main():
    warnings.filterwarnings("ignore")
    OUT.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, (model_cls, cfg_cls, kw) in LM_FIXTURES.items():
        path, checks = make_lm(name, model_cls, cfg_cls, kw)
        sections.append(describe(path, checks))
    with tempfile.TemporaryDirectory() as tmp:
        path, checks = make_bert_qdq(tmp)
        sections.append(describe(path, checks))
    write_readme(sections)
    print("\n\n".join(sections))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
