"""Bad inputs: every one gets one line on stderr, the documented exit code, and a message naming
its source (file and field, the --set, the flag or the path). The table below is ``CASES``
(``test_docstring_reproduces_the_table`` keeps the two equal); each row runs through the CLI
in-process (``test_bad_input``). ``BASE`` is a valid scenario (gpt2-small on two toy phones,
fixed link, uniform plan); ``PROF`` a valid toy profile; ``TRACE`` a valid trace.

| #  | area     | input                                                   | exit | message contains                              |
|----|----------|---------------------------------------------------------|------|-----------------------------------------------|
| 1  | scenario | unknown profile name                                    | 2    | devices[0].profile': unknown profile          |
| 2  | scenario | typo in a field: workload.new_token                     | 2    | workload.new_token': unknown field            |
| 3  | scenario | count -1                                                | 2    | devices[0].count                              |
| 4  | scenario | count 100000 (was an OOM kill after 82 s)               | 2    | less than or equal to 2007                    |
| 5  | scenario | a model that does not fit (bloom-7b1 on the toy phones) | 2    | does not fit                                  |
| 6  | scenario | explicit stages skip a module                           | 2    | skips module 6                                |
| 7  | scenario | explicit stages stop early                              | 2    | the last stage must end at 13                 |
| 8  | scenario | both concurrency and arrival_rate                       | 2    | either concurrency                            |
| 9  | scenario | network kind carrier-pigeon                             | 2    | network.kind                                  |
| 10 | scenario | not YAML                                                | 2    | not valid YAML                                |
| 11 | scenario | no such file                                            | 2    | no such scenario file                         |
| 12 | scenario | a YAML list, not a mapping                              | 2    | expected a mapping                            |
| 13 | scenario | a directory                                             | 2    | is a directory                                |
| 14 | scenario | --set model.x=1 (was a TypeError)                       | 2    | --set 'model.x=1': model is a value           |
| 15 | scenario | --set workload.new_tokens=1e12 (was a MemoryError)      | 2    | new_tokens': Input should be less than        |
| 16 | scenario | explicit stage on device 5 of 2 (was an IndexError)     | 2    | device 5 is not an index 0..1                 |
| 17 | scenario | rssi_dbm .nan (was silently MCS0)                       | 2    | finite number                                 |
| 18 | scenario | rssi_dbm 10                                             | 2    | less than or equal to 0                       |
| 19 | scenario | speed .inf                                              | 2    | devices[0].speed': must be a finite number    |
| 20 | scenario | threads 0                                               | 2    | greater than or equal to 1                    |
| 21 | scenario | threads 3, the profile has 1 only                       | 2    | has coefficients for 1 thread(s) only         |
| 22 | scenario | gpt2-small with 2,100 tokens of context                 | 2    | gpt2-small has 1024                           |
| 23 | scenario | worker: adb:X (was simulated silently)                  | 2    | not a field any more: use backend             |
| 24 | scenario | join of a device already present (was ignored)          | 2    | but it is present then                        |
| 25 | scenario | two devices named a                                     | 2    | both give a device the name 'a'               |
| 26 | scenario | name: ../../escape (default --out outside runs/)        | 2    | is not a plain name                           |
| 27 | scenario | balancer.strategy: nonsense (was found at t=20 s)       | 2    | balancer.strategy': unknown strategy          |
| 28 | scenario | allocation.strategy: nonsense                           | 2    | allocation.strategy': unknown strategy        |
| 29 | scenario | event on device nope                                    | 2    | no device 'nope'                              |
| 30 | scenario | event on device 9                                       | 2    | device 9 is not an index                      |
| 31 | scenario | event kind explode                                      | 2    | events[0]                                     |
| 32 | scenario | throttle factor 0                                       | 2    | greater than 0                                |
| 33 | scenario | throttle factor .nan                                    | 2    | finite number                                 |
| 34 | scenario | allocation.header 7                                     | 2    | allocation.header': device 7 is not an index  |
| 35 | scenario | header on a device absent at the start                  | 2    | marked absent at the start                    |
| 36 | scenario | every device absent                                     | 2    | every device is marked absent                 |
| 37 | scenario | wifi_direct ap_device 5                                 | 2    | network.ap_device                             |
| 38 | scenario | --seed -1                                               | 2    | --seed -1: field 'seed'                       |
| 39 | scenario | --set without '='                                       | 2    | expected path.to.field=value                  |
| 40 | scenario | --set devices[3].absent=false (2 entries)               | 2    | there is no index 3                           |
| 41 | scenario | --set devices.x.absent=true                             | 2    | 'x' is not an index                           |
| 42 | scenario | --set workload[0]=1                                     | 2    | is a section of fields, not a list            |
| 43 | scenario | a top-level typo and a bad field: both reported         | 2    | 2 problems                                    |
| 44 | scenario | 10^6 requests on a 2 GB host                            | 2    | GB of host memory                             |
| 45 | scenario | duration.max_wall_s 0                                   | 2    | duration.max_wall_s                           |
| 46 | scenario | RTT quantiles out of order                              | 2    | median < p90 < p99                            |
| 47 | scenario | bursts end_s before start_s                             | 2    | is not after start_s                          |
| 48 | scenario | trace file missing                                      | 2    | network trace file not found                  |
| 49 | scenario | duration.max_sim_s .inf                                 | 2    | finite number                                 |
| 50 | scenario | 802.11n at 80 MHz                                       | 2    | 802.11n supports 20 or 40 MHz                 |
| 51 | scenario | ONNX model path missing                                 | 2    | no such ONNX file                             |
| 52 | scenario | an ONNX model in kv_cache mode                          | 2    | kv_cache needs a zoo model                    |
| 53 | scenario | weight_dtype int4                                       | 2    | weight_dtype                                  |
| 54 | scenario | devices: []                                             | 2    | devices                                       |
| 55 | scenario | unknown model name                                      | 2    | unknown model 'bloom-9000'                    |
| 56 | scenario | a key given twice (YAML keeps the last silently)        | 2    | duplicate key 'model' (first on line 1)       |
| 57 | scenario | nested 50,000 deep (was a RecursionError)               | 2    | nested too deeply                             |
| 58 | scenario | a !!python/object tag                                   | 2    | could not determine a constructor             |
| 59 | scenario | not UTF-8                                               | 2    | cannot be read as a text file                 |
| 60 | scenario | 60 bad device entries: the first 40 problems            | 2    | 60 problems, the first 40                     |
| 61 | profile  | fused_scale matmul .nan (was a 600 s spin)              | 2    | fused_scale                                   |
| 62 | profile  | thermal.peak_speed .inf                                 | 2    | thermal.peak_speed': must be a finite number  |
| 63 | profile  | ram_available_gb above ram_total_gb                     | 2    | exceeds ram_total_gb                          |
| 64 | profile  | unknown op class                                        | 2    | unknown op class                              |
| 65 | profile  | all coefficients zero                                   | 2    | all coefficients are zero                     |
| 66 | profile  | default_threads without coefficients                    | 2    | default_threads 4 has no coefficients         |
| 67 | profile  | not YAML                                                | 2    | not valid YAML                                |
| 68 | profile  | measured without its samples                            | 2    | a measured profile needs samples              |
| 69 | profile  | freq_ghz 2400 (MHz for GHz)                             | 2    | less than or equal to 10                      |
| 70 | profile  | a key given twice                                       | 2    | duplicate key 'name'                          |
| 71 | profile  | profile show of an unknown name                         | 2    | unknown device profile                        |
| 72 | trace    | a column missing                                        | 2    | missing column(s) rtt_ms                      |
| 73 | trace    | a NaN                                                   | 2    | not a finite number                           |
| 74 | trace    | time going backwards                                    | 2    | strictly increasing                           |
| 75 | trace    | negative throughput                                     | 2    | column throughput_mbps                        |
| 76 | trace    | rows 0.1 ms apart                                       | 2    | at least 1 ms apart                           |
| 77 | trace    | holds a zero throughput at its end                      | 2    | could never finish                            |
| 78 | trace    | empty file                                              | 2    | the trace is empty                            |
| 79 | onnx     | a text file named .onnx                                 | 2    | not a readable ONNX model                     |
| 80 | onnx     | a truncated ONNX file                                   | 2    | not a readable ONNX model                     |
| 81 | onnx     | split --seq-len 200 tiny-gpt2 --verify (was ORT error)  | 2    | tiny-gpt2 has 128 positions                   |
| 82 | onnx     | inspect a missing .onnx                                 | 2    | no such file                                  |
| 83 | onnx     | a scenario's context beyond an ONNX model's positions   | 2    | onnxruntime cannot run hf_gpt2_tiny.onnx      |
| 84 | onnx     | an ONNX model with 9 M tokens of context (was a 2 GB onnxruntime run)| 2    | at most 16,384 tokens                         |
| 85 | onnx     | split an ONNX file at a --seq-len beyond its positions  | 2    | onnxruntime could not run it at --seq-len     |
| 86 | onnx     | the recorded ONNX model changed before --from-manifest  | 2    | changed since the run                         |
| 87 | cli      | profile predict --threads 0 (was silently 4)            | 2    | --threads 0: profile                          |
| 88 | cli      | profile predict --threads 16                            | 2    | no coefficients for 16 threads                |
| 89 | cli      | bench nonsense (was exit 0, nothing printed)            | 2    | unknown benchmark 'nonsense'                  |
| 90 | cli      | bench paper --check (was ignored)                       | 2    | --check applies to `llsim bench allocator`    |
| 91 | cli      | bench allocator --only nope                             | 2    | no bench instance 'nope'                      |
| 92 | cli      | allocate --strategy foo                                 | 2    | --strategy: unknown strategy 'foo'            |
| 93 | cli      | run with neither scenario nor manifest                  | 2    | give a SCENARIO or --from-manifest            |
| 94 | cli      | --from-manifest: no such file                           | 2    | no such file                                  |
| 95 | cli      | --from-manifest: not JSON                               | 2    | not a JSON manifest                           |
| 96 | cli      | --from-manifest: JSON, not a manifest                   | 2    | not an llsim run manifest                     |
| 97 | cli      | --from-manifest with --set                              | 2    | --set and --seed do not apply                 |
| 98 | cli      | model inspect --seq-len 0                               | 2    | --seq-len 0: must be >= 1                     |
| 99 | cli      | model inspect gpt2-small --seq-len 5000                 | 2    | gpt2-small has 1024 positions                 |
| 100| cli      | model inspect an .onnx with --dtype fp16                | 2    | --dtype applies to zoo models                 |
| 101| cli      | model split --segments 0                                | 2    | --segments 0: must be >= 1                    |
| 102| cli      | profile host --runs 0                                   | 2    | --runs 0: must be >= 1                        |
| 103| cli      | profile host --threads 0                                | 2    | thread counts must be in 1..256               |
| 104| cli      | an unknown command                                      | 2    | invalid choice                                |
| 105| cli      | run --seed x                                            | 2    | invalid int value                             |
| 106| output   | run --out an existing file (was found after the run)    | 2    | exists and is a file                          |
| 107| output   | run --out a non-empty directory                         | 2    | the directory is not empty                    |
| 108| output   | run --out a foreign non-empty directory --force         | 2    | --force clears only a directory llsim wrote   |
| 109| output   | run --out below a file                                  | 2    | is a file, not a directory                    |
| 110| output   | run --out where nothing can be written                  | 2    | cannot                                        |
| 111| output   | profile host --out a directory (was found after 41 s)   | 2    | is a directory; give a file name              |
| 112| output   | profile host --out where nothing can be written         | 2    | cannot                                        |
| 113| output   | model split --out a non-empty directory                 | 2    | the directory is not empty                    |
"""
from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import DATA, run_cli
from test_sim import TOY

HERE = Path(__file__)


class Ctx:
    """Files of one test: a valid toy profile, a valid base scenario and trace, bad variants made on demand."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.prof = tmp / "toy.yaml"
        self.prof.write_text(yaml.safe_dump(TOY))
        self.base_data = {"name": "base", "model": "gpt2-small", "seed": 1,
                          "devices": [{"profile": str(self.prof)}, {"profile": str(self.prof)}],
                          "network": {"kind": "fixed", "goodput_mbps": 100.0, "rtt_ms": 2.0},
                          "allocation": {"strategy": "uniform"},
                          "workload": {"prompt_tokens": 8, "new_tokens": 4, "requests": 2, "concurrency": 1}}
        self.base = self.scenario("base.yaml")
        self.trace = tmp / "good.csv"
        self.trace.write_text("time_s,throughput_mbps,rtt_ms\n0,100,2\n1,50,4\n")
        self.out = tmp / "out"

    def scenario(self, name: str, mut=None, data=None) -> Path:
        d = copy.deepcopy(self.base_data if data is None else data)
        if mut:
            mut(d)
        p = self.tmp / name
        p.write_text(yaml.safe_dump(d))
        return p

    def text(self, name: str, text: str) -> Path:
        p = self.tmp / name
        p.write_text(text)
        return p

    def run(self, *sets: str, scenario: Path | None = None) -> list:
        argv = ["run", scenario or self.base, "--out", self.out]
        for s in sets:
            argv += ["--set", s]
        return argv

    def profile(self, name: str, mut) -> Path:
        d = copy.deepcopy(TOY)
        mut(d)
        p = self.tmp / f"{name}.yaml"
        p.write_text(yaml.safe_dump(d))
        return p

    def with_profile(self, name: str, mut) -> list:
        p = self.profile(name, mut)
        return self.run(f"devices[0].profile={p}")

    def with_trace(self, name: str, text: str) -> list:
        p = self.text(f"{name}.csv", text)
        return self.run(f"network={{kind: trace, trace: {p}}}")


def _explicit(*stages):
    return "allocation={strategy: explicit, stages: [" + ", ".join(
        f"{{device: {d}, start_module: {a}, end_module: {b}}}" for d, a, b in stages) + "]}"


def _onnx_text(c: Ctx) -> Path:
    return c.text("notes.onnx", "this is not a model\n")


def _onnx_trunc(c: Ctx) -> Path:
    good = DATA / "onnx" / "hf_gpt2_tiny.onnx"
    p = c.tmp / "trunc.onnx"
    p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return p


def _changed_onnx(c: Ctx) -> list:
    """A run on a copy of an ONNX fixture; the copy is then modified: the manifest's digest catches it."""
    model = c.tmp / "m.onnx"
    shutil.copy(DATA / "onnx" / "hf_gpt2_tiny.onnx", model)
    p = c.scenario("onnx.yaml", lambda d: (d.update(model=str(model)), d["workload"].update(mode="recompute")))
    code, _, err = run_cli(["run", p, "--out", c.tmp / "rec"], _capsys[0])
    assert code == 0, err
    with open(model, "ab") as f:
        f.write(b"\0")
    return ["run", "--from-manifest", c.tmp / "rec" / "manifest.json", "--out", c.out]


def _nonempty(c: Ctx, foreign: bool = False) -> Path:
    d = c.tmp / ("foreign" if foreign else "prev")
    d.mkdir(exist_ok=True)
    (d / ("notes.txt" if foreign else "tokens.csv")).write_text("x\n")
    return d


def _binary(c: Ctx) -> Path:
    p = c.tmp / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00model: x")
    return p


def _file(c: Ctx) -> Path:
    return c.text("afile", "x\n")


UNWRITABLE = Path("/proc/llsim-cannot-write-here")

# (area, input, exit code, message, argv builder)
CASES = [
    ("scenario", "unknown profile name", 2, "devices[0].profile': unknown profile",
     lambda c: c.run("devices[0].profile=pixel-99")),
    ("scenario", "typo in a field: workload.new_token", 2, "workload.new_token': unknown field",
     lambda c: c.run("workload.new_token=3")),
    ("scenario", "count -1", 2, "devices[0].count", lambda c: c.run("devices[0].count=-1")),
    ("scenario", "count 100000 (was an OOM kill after 82 s)", 2, "less than or equal to 2007",
     lambda c: c.run("devices[0].count=100000")),
    ("scenario", "a model that does not fit (bloom-7b1 on the toy phones)", 2, "does not fit",
     lambda c: c.run("model=bloom-7b1")),
    ("scenario", "explicit stages skip a module", 2, "skips module 6", lambda c: c.run(_explicit((0, 0, 5), (1, 7, 13)))),
    ("scenario", "explicit stages stop early", 2, "the last stage must end at 13",
     lambda c: c.run(_explicit((0, 0, 5), (1, 6, 10)))),
    ("scenario", "both concurrency and arrival_rate", 2, "either concurrency", lambda c: c.run("workload.arrival_rate=1")),
    ("scenario", "network kind carrier-pigeon", 2, "network.kind", lambda c: c.run("network.kind=carrier-pigeon")),
    ("scenario", "not YAML", 2, "not valid YAML", lambda c: ["run", c.text("bad.yaml", "model: [x\n"), "--out", c.out]),
    ("scenario", "no such file", 2, "no such scenario file", lambda c: ["run", c.tmp / "missing.yaml", "--out", c.out]),
    ("scenario", "a YAML list, not a mapping", 2, "expected a mapping",
     lambda c: ["run", c.text("list.yaml", "- a\n- b\n"), "--out", c.out]),
    ("scenario", "a directory", 2, "is a directory", lambda c: ["run", c.tmp, "--out", c.out]),
    ("scenario", "--set model.x=1 (was a TypeError)", 2, "--set 'model.x=1': model is a value",
     lambda c: c.run("model.x=1")),
    ("scenario", "--set workload.new_tokens=1e12 (was a MemoryError)", 2, "new_tokens': Input should be less than",
     lambda c: c.run("workload.new_tokens=1000000000000")),
    ("scenario", "explicit stage on device 5 of 2 (was an IndexError)", 2, "device 5 is not an index 0..1",
     lambda c: c.run(_explicit((5, 0, 13)))),
    ("scenario", "rssi_dbm .nan (was silently MCS0)", 2, "finite number", lambda c: c.run("devices[0].rssi_dbm=.nan")),
    ("scenario", "rssi_dbm 10", 2, "less than or equal to 0", lambda c: c.run("devices[0].rssi_dbm=10")),
    ("scenario", "speed .inf", 2, "devices[0].speed': must be a finite number", lambda c: c.run("devices[0].speed=.inf")),
    ("scenario", "threads 0", 2, "greater than or equal to 1", lambda c: c.run("devices[0].threads=0")),
    ("scenario", "threads 3, the profile has 1 only", 2, "has coefficients for 1 thread(s) only",
     lambda c: c.run("devices[0].threads=3")),
    ("scenario", "gpt2-small with 2,100 tokens of context", 2, "gpt2-small has 1024",
     lambda c: c.run("workload.prompt_tokens=100", "workload.new_tokens=2000")),
    ("scenario", "worker: adb:X (was simulated silently)", 2, "not a field any more: use backend",
     lambda c: c.run("devices[0].worker=adb:X")),
    ("scenario", "join of a device already present (was ignored)", 2, "but it is present then",
     lambda c: c.run("events=[{at: 1, kind: join, device: 1}]")),
    ("scenario", "two devices named a", 2, "both give a device the name 'a'",
     lambda c: c.run("devices[0].name=a", "devices[1].name=a")),
    ("scenario", "name: ../../escape (default --out outside runs/)", 2, "is not a plain name",
     lambda c: ["run", c.scenario("esc.yaml", lambda d: d.update(name="../../escape"))]),
    ("scenario", "balancer.strategy: nonsense (was found at t=20 s)", 2, "balancer.strategy': unknown strategy",
     lambda c: c.run("balancer={enabled: true, strategy: nonsense}")),
    ("scenario", "allocation.strategy: nonsense", 2, "allocation.strategy': unknown strategy",
     lambda c: c.run("allocation.strategy=nonsense")),
    ("scenario", "event on device nope", 2, "no device 'nope'", lambda c: c.run("events=[{at: 1, kind: leave, device: nope}]")),
    ("scenario", "event on device 9", 2, "device 9 is not an index",
     lambda c: c.run("events=[{at: 1, kind: throttle, device: 9, factor: 0.5}]")),
    ("scenario", "event kind explode", 2, "events[0]", lambda c: c.run("events=[{at: 1, kind: explode, device: 0}]")),
    ("scenario", "throttle factor 0", 2, "greater than 0", lambda c: c.run("events=[{at: 1, kind: throttle, device: 0, factor: 0}]")),
    ("scenario", "throttle factor .nan", 2, "finite number",
     lambda c: c.run("events=[{at: 1, kind: throttle, device: 0, factor: .nan}]")),
    ("scenario", "allocation.header 7", 2, "allocation.header': device 7 is not an index",
     lambda c: c.run("allocation.header=7")),
    ("scenario", "header on a device absent at the start", 2, "marked absent at the start",
     lambda c: c.run("devices[1].absent=true", "allocation.header=1")),
    ("scenario", "every device absent", 2, "every device is marked absent",
     lambda c: c.run("devices[0].absent=true", "devices[1].absent=true")),
    ("scenario", "wifi_direct ap_device 5", 2, "network.ap_device", lambda c: c.run("network={kind: wifi_direct, ap_device: 5}")),
    ("scenario", "--seed -1", 2, "--seed -1: field 'seed'", lambda c: [*c.run(), "--seed", "-1"]),
    ("scenario", "--set without '='", 2, "expected path.to.field=value", lambda c: c.run("workload.requests")),
    ("scenario", "--set devices[3].absent=false (2 entries)", 2, "there is no index 3",
     lambda c: c.run("devices[3].absent=false")),
    ("scenario", "--set devices.x.absent=true", 2, "'x' is not an index", lambda c: c.run("devices.x.absent=true")),
    ("scenario", "--set workload[0]=1", 2, "is a section of fields, not a list", lambda c: c.run("workload[0]=1")),
    ("scenario", "a top-level typo and a bad field: both reported", 2, "2 problems",
     lambda c: ["run", c.scenario("two.yaml", lambda d: d.update(wokload=1, seed=-3)), "--out", c.out]),
    ("scenario", "10^6 requests on a 2 GB host", 2, "GB of host memory", lambda c: c.run("workload.requests=1000000")),
    ("scenario", "duration.max_wall_s 0", 2, "duration.max_wall_s", lambda c: c.run("duration.max_wall_s=0")),
    ("scenario", "RTT quantiles out of order", 2, "median < p90 < p99",
     lambda c: c.run("network={kind: infrastructure, rtt_ms: {median: 30, p90: 20, p99: 250}}")),
    ("scenario", "bursts end_s before start_s", 2, "is not after start_s",
     lambda c: c.run("events=[{kind: background_bursts, rate_per_s: 1, share: 0.5, mean_duration_s: 1, "
                     "start_s: 5, end_s: 2}]")),
    ("scenario", "trace file missing", 2, "network trace file not found",
     lambda c: c.run(f"network={{kind: trace, trace: {c.tmp / 'nope.csv'}}}")),
    ("scenario", "duration.max_sim_s .inf", 2, "finite number", lambda c: c.run("duration.max_sim_s=.inf")),
    ("scenario", "802.11n at 80 MHz", 2, "802.11n supports 20 or 40 MHz",
     lambda c: c.run("network={kind: infrastructure, standard: n, width_mhz: 80}")),
    ("scenario", "ONNX model path missing", 2, "no such ONNX file", lambda c: c.run(f"model={c.tmp / 'nope.onnx'}")),
    ("scenario", "an ONNX model in kv_cache mode", 2, "kv_cache needs a zoo model",
     lambda c: c.run(f"model={DATA / 'onnx' / 'hf_gpt2_tiny.onnx'}")),
    ("scenario", "weight_dtype int4", 2, "weight_dtype", lambda c: c.run("weight_dtype=int4")),
    ("scenario", "devices: []", 2, "devices", lambda c: c.run("devices=[]")),
    ("scenario", "unknown model name", 2, "unknown model 'bloom-9000'", lambda c: c.run("model=bloom-9000")),
    ("scenario", "a key given twice (YAML keeps the last silently)", 2, "duplicate key 'model' (first on line 1)",
     lambda c: ["run", c.text("dup.yaml", "model: tiny-gpt2\nmodel: gpt2-small\ndevices: [{profile: kirin-990}]\n"),
                "--out", c.out]),
    ("scenario", "nested 50,000 deep (was a RecursionError)", 2, "nested too deeply",
     lambda c: ["run", c.text("deep.yaml", "model: " + "[" * 50000 + "]" * 50000 + "\n"), "--out", c.out]),
    ("scenario", "a !!python/object tag", 2, "could not determine a constructor",
     lambda c: ["run", c.text("tag.yaml", "model: !!python/object:os.system x\n"), "--out", c.out]),
    ("scenario", "not UTF-8", 2, "cannot be read as a text file",
     lambda c: ["run", _binary(c), "--out", c.out]),
    ("scenario", "60 bad device entries: the first 40 problems", 2, "60 problems, the first 40",
     lambda c: c.run("devices=[" + ", ".join(["3"] * 60) + "]")),
    ("profile", "fused_scale matmul .nan (was a 600 s spin)", 2, "fused_scale",
     lambda c: c.with_profile("nan", lambda d: d["compute"]["threads"][1].update(fused_scale={"matmul": float("nan")}))),
    ("profile", "thermal.peak_speed .inf", 2, "thermal.peak_speed': must be a finite number",
     lambda c: c.with_profile("inf", lambda d: d["thermal"].update(peak_speed=float("inf")))),
    ("profile", "ram_available_gb above ram_total_gb", 2, "exceeds ram_total_gb",
     lambda c: c.with_profile("ram", lambda d: d["memory"].update(ram_available_gb=64))),
    ("profile", "unknown op class", 2, "unknown op class",
     lambda c: c.with_profile("cls", lambda d: d["compute"]["threads"][1]["classes"].update(warp={"overhead_us": 1}))),
    ("profile", "all coefficients zero", 2, "all coefficients are zero",
     lambda c: c.with_profile("zero", lambda d: d["compute"]["threads"][1]["classes"].update(norm={"overhead_us": 0}))),
    ("profile", "default_threads without coefficients", 2, "default_threads 4 has no coefficients",
     lambda c: c.with_profile("thr", lambda d: d["compute"].update(default_threads=4))),
    ("profile", "not YAML", 2, "not valid YAML",
     lambda c: c.run(f"devices[0].profile={c.text('broken.yaml', 'name: [x')}")),
    ("profile", "measured without its samples", 2, "a measured profile needs samples",
     lambda c: c.with_profile("meas", lambda d: d.update(provenance={"kind": "measured", "tool": "t", "date": "d",
                                                                     "host": "h", "onnxruntime_version": "1"}))),
    ("profile", "freq_ghz 2400 (MHz for GHz)", 2, "less than or equal to 10",
     lambda c: c.with_profile("mhz", lambda d: d["cpu"][0].update(freq_ghz=2400))),
    ("profile", "a key given twice", 2, "duplicate key 'name'",
     lambda c: c.run(f"devices[0].profile={c.text('twice.yaml', c.prof.read_text() + 'name: again' + chr(10))}")),
    ("profile", "profile show of an unknown name", 2, "unknown device profile",
     lambda c: ["profile", "show", "pixel-99"]),
    ("trace", "a column missing", 2, "missing column(s) rtt_ms", lambda c: c.with_trace("col", "time_s,throughput_mbps\n0,1\n")),
    ("trace", "a NaN", 2, "not a finite number", lambda c: c.with_trace("nan", "time_s,throughput_mbps,rtt_ms\n0,nan,1\n")),
    ("trace", "time going backwards", 2, "strictly increasing",
     lambda c: c.with_trace("back", "time_s,throughput_mbps,rtt_ms\n1,10,1\n0.5,10,1\n")),
    ("trace", "negative throughput", 2, "column throughput_mbps",
     lambda c: c.with_trace("neg", "time_s,throughput_mbps,rtt_ms\n0,-10,1\n")),
    ("trace", "rows 0.1 ms apart", 2, "at least 1 ms apart",
     lambda c: c.with_trace("dense", "time_s,throughput_mbps,rtt_ms\n0,10,1\n0.0001,10,1\n")),
    ("trace", "holds a zero throughput at its end", 2, "could never finish",
     lambda c: c.with_trace("zero", "time_s,throughput_mbps,rtt_ms\n0,10,1\n1,0,1\n")),
    ("trace", "empty file", 2, "the trace is empty", lambda c: c.with_trace("empty", "")),
    ("onnx", "a text file named .onnx", 2, "not a readable ONNX model", lambda c: ["model", "inspect", _onnx_text(c)]),
    ("onnx", "a truncated ONNX file", 2, "not a readable ONNX model",
     lambda c: ["model", "split", _onnx_trunc(c), "--out", c.out]),
    ("onnx", "split --seq-len 200 tiny-gpt2 --verify (was ORT error)", 2, "tiny-gpt2 has 128 positions",
     lambda c: ["model", "split", "tiny-gpt2", "--seq-len", "200", "--verify", "--out", c.out]),
    ("onnx", "inspect a missing .onnx", 2, "no such file", lambda c: ["model", "inspect", c.tmp / "missing.onnx"]),
    ("onnx", "a scenario's context beyond an ONNX model's positions", 2, "onnxruntime cannot run hf_gpt2_tiny.onnx",
     lambda c: c.run(f"model={DATA / 'onnx' / 'hf_gpt2_tiny.onnx'}", "workload.mode=recompute",
                     "workload.prompt_tokens=200")),
    ("onnx", "an ONNX model with 9 M tokens of context (was a 2 GB onnxruntime run)", 2, "at most 16,384 tokens",
     lambda c: c.run(f"model={DATA / 'onnx' / 'hf_gpt2_tiny.onnx'}", "workload.mode=recompute",
                     "workload.new_tokens=9000000")),
    ("onnx", "split an ONNX file at a --seq-len beyond its positions", 2, "onnxruntime could not run it at --seq-len",
     lambda c: ["model", "split", DATA / "onnx" / "hf_gpt2_tiny.onnx", "--seq-len", "500", "--out", c.out]),
    ("onnx", "the recorded ONNX model changed before --from-manifest", 2, "changed since the run", _changed_onnx),
    ("cli", "profile predict --threads 0 (was silently 4)", 2, "--threads 0: profile",
     lambda c: ["profile", "predict", "kirin-990", "tiny-gpt2", "--seq-len", "8", "--threads", "0"]),
    ("cli", "profile predict --threads 16", 2, "no coefficients for 16 threads",
     lambda c: ["profile", "predict", "kirin-990", "tiny-gpt2", "--seq-len", "8", "--threads", "16"]),
    ("cli", "bench nonsense (was exit 0, nothing printed)", 2, "unknown benchmark 'nonsense'",
     lambda c: ["bench", "nonsense"]),
    ("cli", "bench paper --check (was ignored)", 2, "--check applies to `llsim bench allocator`",
     lambda c: ["bench", "paper", "--check"]),
    ("cli", "bench allocator --only nope", 2, "no bench instance 'nope'", lambda c: ["bench", "allocator", "--only", "nope"]),
    ("cli", "allocate --strategy foo", 2, "--strategy: unknown strategy 'foo'",
     lambda c: ["allocate", c.base, "--strategy", "foo"]),
    ("cli", "run with neither scenario nor manifest", 2, "give a SCENARIO or --from-manifest", lambda c: ["run"]),
    ("cli", "--from-manifest: no such file", 2, "no such file",
     lambda c: ["run", "--from-manifest", c.tmp / "none.json", "--out", c.out]),
    ("cli", "--from-manifest: not JSON", 2, "not a JSON manifest",
     lambda c: ["run", "--from-manifest", c.text("m.json", "{oops"), "--out", c.out]),
    ("cli", "--from-manifest: JSON, not a manifest", 2, "not an llsim run manifest",
     lambda c: ["run", "--from-manifest", c.text("m2.json", "{}"), "--out", c.out]),
    ("cli", "--from-manifest with --set", 2, "--set and --seed do not apply",
     lambda c: ["run", "--from-manifest", c.text("m3.json", "{}"), "--set", "seed=2"]),
    ("cli", "model inspect --seq-len 0", 2, "--seq-len 0: must be >= 1",
     lambda c: ["model", "inspect", "tiny-gpt2", "--seq-len", "0"]),
    ("cli", "model inspect gpt2-small --seq-len 5000", 2, "gpt2-small has 1024 positions",
     lambda c: ["model", "inspect", "gpt2-small", "--seq-len", "5000"]),
    ("cli", "model inspect an .onnx with --dtype fp16", 2, "--dtype applies to zoo models",
     lambda c: ["model", "inspect", DATA / "onnx" / "hf_gpt2_tiny.onnx", "--dtype", "fp16"]),
    ("cli", "model split --segments 0", 2, "--segments 0: must be >= 1",
     lambda c: ["model", "split", "tiny-gpt2", "--segments", "0", "--out", c.out]),
    ("cli", "profile host --runs 0", 2, "--runs 0: must be >= 1",
     lambda c: ["profile", "host", "--out", c.tmp / "h.yaml", "--runs", "0"]),
    ("cli", "profile host --threads 0", 2, "thread counts must be in 1..256",
     lambda c: ["profile", "host", "--out", c.tmp / "h.yaml", "--threads", "0"]),
    ("cli", "an unknown command", 2, "invalid choice", lambda c: ["simulate", "demo"]),
    ("cli", "run --seed x", 2, "invalid int value", lambda c: ["run", c.base, "--seed", "x"]),
    ("output", "run --out an existing file (was found after the run)", 2, "exists and is a file",
     lambda c: ["run", c.base, "--out", _file(c)]),
    ("output", "run --out a non-empty directory", 2, "the directory is not empty",
     lambda c: ["run", c.base, "--out", _nonempty(c)]),
    ("output", "run --out a foreign non-empty directory --force", 2, "--force clears only a directory llsim wrote",
     lambda c: ["run", c.base, "--out", _nonempty(c, foreign=True), "--force"]),
    ("output", "run --out below a file", 2, "is a file, not a directory",
     lambda c: ["run", c.base, "--out", _file(c) / "sub"]),
    ("output", "run --out where nothing can be written", 2, "cannot", lambda c: ["run", c.base, "--out", UNWRITABLE]),
    ("output", "profile host --out a directory (was found after 41 s)", 2, "is a directory; give a file name",
     lambda c: ["profile", "host", "--out", c.tmp]),
    ("output", "profile host --out where nothing can be written", 2, "cannot",
     lambda c: ["profile", "host", "--out", UNWRITABLE / "host.yaml"]),
    ("output", "model split --out a non-empty directory", 2, "the directory is not empty",
     lambda c: ["model", "split", "tiny-gpt2", "--out", _nonempty(c, foreign=True)]),
]

_capsys: list = [None]


def table_text() -> str:
    head = ("| #  | area     | input                                                   | exit | message contains"
            "                              |")
    sep = "|----|----------|---------------------------------------------------------|------|-----------------------------------------------|"
    rows = [head, sep]
    for i, (area, what, code, msg, _) in enumerate(CASES, 1):
        rows.append(f"| {str(i):<3}| {area:<9}| {what:<56}| {code:<5}| {msg:<46}|")
    return "\n".join(rows)


def test_docstring_reproduces_the_table():
    doc = __doc__
    got = "\n".join(ln for ln in doc.splitlines() if ln.startswith("|"))
    assert got == table_text(), "update the module docstring: print(tests.test_bad_inputs.table_text())"
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{i + 1}-{c[1][:40]}" for i, c in enumerate(CASES)])
def test_bad_input(case, tmp_path, capsys, monkeypatch):
    area, what, code, msg, build = CASES[case]
    monkeypatch.setenv("LLSIM_HOST_MEMORY_GB", "2")
    _capsys[0] = capsys
    c = Ctx(tmp_path)
    argv = build(c)
    capsys.readouterr()
    got, out, err = run_cli(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == code, (argv, err)
    assert len(lines) == 1, (argv, err)
    assert msg in lines[0], (argv, lines[0])
    assert lines[0].startswith("llsim: error: "), lines[0]
    assert "Traceback" not in err + out


def test_every_problem_names_its_source(tmp_path, capsys):
    """Problems from the file name the file; problems a --set caused name the --set, not the file."""
    c = Ctx(tmp_path)
    p = c.scenario("mix.yaml", lambda d: d["workload"].update(new_token=3))
    code, _, err = run_cli(["run", p, "--set", "devices[1].rssi_dbm=.nan", "--set", "balancer.strategy=x"], capsys)
    line = err.strip()
    assert code == 2 and line.startswith("llsim: error: 3 problems: ")
    assert f"{p}: field 'workload.new_token'" in line
    assert "--set 'devices[1].rssi_dbm=.nan': field 'devices[1].rssi_dbm'" in line
    assert "--set 'balancer.strategy=x': field 'balancer.strategy'" in line
    assert re.search(r"\(\+\d+ more\)", line) is None  # nothing hidden


def test_set_reaches_every_device_field_in_both_forms(tmp_path):
    from llsim.scenario import load_scenario

    c = Ctx(tmp_path)
    for form in ("devices[1].absent=true", "devices.1.absent=true"):
        sc = load_scenario(c.base, [form, "devices[0].rssi_dbm=-61", "devices.0.speed=0.5"])
        assert sc.devices[1].absent and sc.devices[0].rssi_dbm == -61 and sc.devices[0].speed == 0.5


def test_device_names_count_across_entries(tmp_path):
    from llsim.scenario import load_scenario
    from llsim.cluster import expand_devices

    c = Ctx(tmp_path)
    sc = load_scenario(c.base, ["devices=[{profile: %s}, {profile: kirin-990}, {profile: %s, count: 2}, "
                                "{profile: kirin-990, name: k, count: 2}, {profile: kirin-990, name: solo}]"
                                % (c.prof, c.prof)])
    names = [d.name for d in expand_devices(sc)]
    assert names == ["toy-0", "kirin-990-0", "toy-1", "toy-2", "k-0", "k-1", "solo"]
