"""CLI of `llsim model`: JSON contract and bad input (one line, exit 2, no traceback).

Bad inputs tried (each must name the problem):
| input                                   | expected message             |
|-----------------------------------------|------------------------------|
| missing file                            | no such file                 |
| a directory                             | is a directory               |
| text file named .onnx                   | not a readable ONNX model    |
| truncated ONNX (first half of a file)   | not a readable ONNX model    |
| uncuttable graph (two parallel paths)   | cannot be cut                |
| --boundaries out of range               | out of range                 |
| --boundaries not increasing             | strictly increasing          |
| --boundaries not numbers                | comma-separated              |
| --segments larger than modules          | out of range                 |
| unknown zoo name                        | unknown model                |
| --seq-len 0                             | must be >= 1                 |
"""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import DATA, run_cli


def test_inspect_json_contract(capsys):
    code, out, err = run_cli(["model", "inspect", "gpt2-small", "--seq-len", "64", "--batch", "2", "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["model"] == "gpt2-small" and d["seq_len"] == 64 and d["batch"] == 2
    assert d["total_params"] == 124_439_808
    assert len(d["modules"]) == 14
    assert set(d["modules"][0]) == {"index", "name", "params", "flops", "output_bytes"}
    assert d["total_flops"] == pytest.approx(sum(m["flops"] for m in d["modules"]))


def test_inspect_onnx_file_table(capsys):
    code, out, _ = run_cli(["model", "inspect", DATA / "onnx" / "hf_gpt2_tiny.onnx", "--seq-len", "8"], capsys)
    assert code == 0 and "block.1" in out and "total" in out


def test_split_verify(tmp_path, capsys):
    code, out, _ = run_cli(["model", "split", "tiny-bloom", "--segments", "3", "--out", tmp_path, "--verify"], capsys)
    assert code == 0
    assert "OK" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert len(plan["segments"]) == 3 and plan["boundaries"] == [0, 2, 3, 5]


def test_model_list(capsys):
    code, out, _ = run_cli(["model", "list"], capsys)
    assert code == 0 and "bloom-7b1" in out and "llama-3.2-1b" in out


def _uncuttable(path):
    """Two activation paths from the input that only meet at the end: no cut has a single one."""
    w = [numpy_helper.from_array(np.eye(32, dtype=np.float32) * (i + 1), f"w{i}") for i in range(6)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a0"]), helper.make_node("MatMul", ["x", "w1"], ["b0"])]
    for i in range(1, 3):
        nodes += [helper.make_node("MatMul", [f"a{i-1}", f"w{2*i}"], [f"a{i}"]),
                  helper.make_node("MatMul", [f"b{i-1}", f"w{2*i+1}"], [f"b{i}"])]
    nodes.append(helper.make_node("Add", ["a2", "b2"], ["y"]))
    g = helper.make_graph(nodes, "parallel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 32])], initializer=w)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    good = DATA / "onnx" / "hf_gpt2_tiny.onnx"
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    unc = tmp_path / "parallel.onnx"
    _uncuttable(unc)
    return [
        (["model", "inspect", tmp_path / "missing.onnx"], "no such file"),
        (["model", "inspect", tmp_path], "is a directory"),
        (["model", "inspect", text], "not a readable ONNX model"),
        (["model", "split", trunc, "--out", tmp_path / "o"], "not a readable ONNX model"),
        (["model", "split", unc, "--segments", "2", "--out", tmp_path / "o"], "cannot be cut"),
        (["model", "split", "tiny-gpt2", "--boundaries", "0,3,9", "--out", tmp_path / "o"], "out of range"),
        (["model", "split", "tiny-gpt2", "--boundaries", "0,3,2", "--out", tmp_path / "o"], "strictly increasing"),
        (["model", "split", "tiny-gpt2", "--boundaries", "a,b", "--out", tmp_path / "o"], "comma-separated"),
        (["model", "split", "tiny-gpt2", "--segments", "9", "--out", tmp_path / "o"], "out of range"),
        (["model", "inspect", "bloom-9000"], "unknown model"),
        (["model", "inspect", "tiny-gpt2", "--seq-len", "0"], "must be >= 1"),
    ]


def test_bad_inputs_one_line_exit_2(tmp_path, capsys):
    for argv, msg in _bad_inputs(tmp_path):
        code, out, err = run_cli(argv, capsys)
        assert code == 2, (argv, err)
        lines = [ln for ln in err.strip().splitlines() if ln]
        assert len(lines) == 1 and msg in lines[0], (argv, err)
        assert "Traceback" not in err


def test_uncuttable_model_still_inspects_as_one_module(tmp_path, capsys):
    p = tmp_path / "parallel.onnx"
    _uncuttable(p)
    code, out, _ = run_cli(["model", "inspect", p, "--json"], capsys)
    assert code == 0 and len(json.loads(out)["modules"]) == 1


def test_real_entry_point_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "llsim", "model", "inspect", str(tmp_path / "nope.onnx")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "no such file" in r.stderr
