"""Property-based test: random and adversarial inputs through the real CLI, in-process.

A seeded generator (no dependency; ``LLSIM_FUZZ_SEED`` picks another stream, ``LLSIM_FUZZ_CASES``
another count) draws cases of four kinds:

* **scenarios**: one of five valid bases (fixed link, Wi-Fi with the allocator, Wi-Fi Direct with
  a trace-free balancer and events, a measured trace, an ONNX model in recompute mode), then 1-4
  mutations: a field of the schema (read from the pydantic models, so new fields are covered)
  set to an adversarial value (0, -1, 1e300, NaN, infinities, 10^20, "", lists, mappings, None,
  booleans, path-like and whitespace strings, valid-looking names), a key deleted, an unknown
  key, a section replaced by a scalar, a random event, a duplicated device entry;
* **profiles**: a shipped or toy profile with 1-3 leaves mutated, referenced by the scenario;
* **traces**: CSVs of random rows, garbage bytes, missing columns, adversarial numbers;
* **command lines**: random subcommands, flags and values (never a real benchmark or profiling).

Each case must end with exit 0, 2 or 3, within ``CASE_TIMEOUT_S``; on 2 or 3 with exactly one line
on stderr; never a traceback; and every JSON file it wrote must be strict JSON, every CSV free of
NaN/Infinity. CI runs ``DEFAULT_CASES`` cases (about a minute on 2 cores; the seed is fixed, so CI
is deterministic); a failure prints the case to reproduce it.
"""
from __future__ import annotations

import copy
import csv
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import yaml

from conftest import DATA, run_cli
from test_sim import TOY

DEFAULT_CASES = 1000
CASE_TIMEOUT_S = 40.0
ROOT = Path(__file__).resolve().parents[1]

NASTY = [0, -1, 1, 2, 3, 0.5, -0.5, 1e-300, 1e300, -1e300, 10**20, -(10**20), float("nan"), float("inf"),
         float("-inf"), "", " ", "x", "nope", "0", "1e3", "../../x", "a b", None, True, False, [], {}, [1, "a"],
         {"a": 1}, "snapdragon-8gen2-0", "kirin-990", 2**63, 7.25]


class Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise Timeout()


def _bases(tmp: Path) -> list[dict]:
    prof = tmp / "toy.yaml"
    prof.write_text(yaml.safe_dump(TOY))
    trace = tmp / "base-trace.csv"
    trace.write_text("time_s,throughput_mbps,rtt_ms\n0,80,3\n0.5,20,9\n1.2,60,4\n")
    small = {"prompt_tokens": 8, "new_tokens": 4, "requests": 3, "concurrency": 2}
    dur = {"max_wall_s": 5, "max_sim_s": 600}
    return [
        {"name": "fixed", "model": "gpt2-small", "seed": 1, "devices": [{"profile": str(prof), "count": 2}],
         "network": {"kind": "fixed", "goodput_mbps": 100.0, "rtt_ms": 2.0}, "allocation": {"strategy": "uniform"},
         "workload": dict(small), "duration": dict(dur)},
        {"name": "wifi", "model": "bloom-560m", "weight_dtype": "int8", "seed": 2,
         "devices": [{"profile": "snapdragon-8gen2", "threads": 4, "rssi_dbm": -50}, {"profile": "kirin-990"},
                     {"profile": "kirin-810", "rssi_dbm": -65}],
         "network": {"kind": "infrastructure", "standard": "ac", "width_mhz": 80},
         "allocation": {"strategy": "milp", "objective": "throughput"}, "workload": dict(small), "duration": dict(dur)},
        {"name": "dyn", "model": "tiny-gpt2", "seed": 3,
         "devices": [{"profile": "tensor-g3"}, {"profile": "exynos-1380", "count": 2}, {"profile": "helio-g85",
                                                                                       "absent": True}],
         "network": {"kind": "wifi_direct", "ap_device": 0},
         "allocation": {"strategy": "pipeedge"}, "workload": {**small, "requests": 6},
         "events": [{"at": 0.05, "kind": "throttle", "device": 1, "factor": 0.5},
                    {"at": 0.1, "kind": "join", "device": 3}, {"kind": "noise", "sigma": 0.2}],
         "balancer": {"enabled": True, "interval_s": 0.05, "sustain_s": 0.1, "min_interval_s": 0.2, "smoothing_s": 0.1},
         "duration": dict(dur)},
        {"name": "trace", "model": "tiny-llama", "seed": 4, "devices": [{"profile": str(prof), "count": 3}],
         "network": {"kind": "trace", "trace": str(trace), "on_end": "loop"}, "allocation": {"strategy": "greedy"},
         "workload": {**small, "arrival_rate": 5.0, "concurrency": None}, "duration": dict(dur)},
        {"name": "onnx", "model": str(DATA / "onnx" / "hf_gpt2_tiny.onnx"), "seed": 5,
         "devices": [{"profile": str(prof)}, {"profile": "kirin-990"}], "network": {"kind": "fixed", "goodput_mbps": 50},
         "allocation": {"strategy": "memory"}, "workload": {**small, "mode": "recompute"}, "duration": dict(dur)},
    ]


def _schema_fields() -> dict[str, list[str]]:
    """Section path -> field names, from the pydantic models (so a new field is fuzzed too)."""
    from llsim import scenario as S
    from llsim.network import config as N

    out = {"": list(S.Scenario.model_fields)}
    out["devices[]"] = list(S.DeviceSpec.model_fields)
    out["allocation"] = list(S.Allocation.model_fields)
    out["workload"] = list(S.Workload.model_fields)
    out["balancer"] = list(S.Balancer.model_fields)
    out["duration"] = list(S.Duration.model_fields)
    out["network"] = sorted({f for m in (N.InfrastructureConfig, N.WifiDirectConfig, N.FixedConfig, N.TraceConfig)
                             for f in m.model_fields})
    out["events[]"] = sorted({f for m in (S.ThrottleEvent, S.BackgroundEvent, S.RssiEvent, S.LeaveEvent, S.JoinEvent,
                                          S.BurstsEvent, S.ThermalEvent, S.NoiseEvent) for f in m.model_fields})
    return out


EVENT_KINDS = ["throttle", "background", "rssi", "leave", "join", "background_bursts", "thermal", "noise", "boom"]


PLAUSIBLE = [0.0]  # probability of a plausible value, set per case (some cases explore valid inputs)


def _value(rng: random.Random, path: str):
    if path.endswith("max_wall_s"):  # the wall budget may be broken, never long (a case must stay bounded)
        return rng.choice([0, -1, float("nan"), float("inf"), "x", None, 0.5, 2])
    if rng.random() < PLAUSIBLE[0]:  # a plausible value of about the right size
        return rng.choice([rng.randint(0, 40), round(rng.uniform(-100, 100), 3), round(rng.uniform(0, 1), 3)])
    return rng.choice(NASTY)


def _mutate_scenario(rng: random.Random, d: dict, fields: dict) -> list[str]:
    log = []
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        section = rng.choice(list(fields))
        if section.endswith("[]"):
            lst = d.get(section[:-2])
            if not isinstance(lst, list) or not lst:
                continue
            i = rng.randrange(len(lst))
            target, where = lst[i], f"{section[:-2]}[{i}]"
        elif section:
            target, where = d.get(section), section
        else:
            target, where = d, ""
        if not isinstance(target, dict):
            continue
        key = rng.choice(fields[section])
        if op < 0.6:
            v = _value(rng, f"{where}.{key}")
            target[key] = v
            log.append(f"{where}.{key} = {v!r}")
        elif op < 0.7:
            target.pop(key, None)
            log.append(f"del {where}.{key}")
        elif op < 0.75:
            target["typo_" + key] = 1
            log.append(f"{where}.typo_{key} = 1")
        elif op < 0.8 and section:
            v = rng.choice(NASTY)
            if section.endswith("[]"):
                d[section[:-2]][i] = v
            else:
                d[section] = v
            log.append(f"{where} = {v!r}")
        elif op < 0.92:
            ev = {"kind": rng.choice(EVENT_KINDS), "at": rng.choice([0, 0.01, 0.1, 1, 1e9, -1, float("nan")]),
                  "device": rng.choice([0, 1, 2, 3, 9, -1, "nope", "kirin-990-0", "tensor-g3-0", None])}
            for k in rng.sample(fields["events[]"], 3):
                ev[k] = _value(rng, k)
            if not isinstance(d.get("events"), list):
                d["events"] = []
            d["events"].append(ev)
            log.append(f"event {ev!r}")
        elif isinstance(d.get("devices"), list) and d["devices"]:
            e = copy.deepcopy(rng.choice(d["devices"]))
            if isinstance(e, dict) and rng.random() < 0.5:
                e["name"] = rng.choice(["a", "b", "snapdragon-8gen2-0", "kirin-990-0", "x y", "3"])
            d["devices"].append(e)
            log.append(f"device entry {e!r}")
    return log


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _mutated_profile(rng: random.Random, tmp: Path, n: int) -> tuple[Path, list[str]]:
    from llsim.device.profile import PROFILE_DIR

    src = rng.choice([None, "kirin-990", "helio-g85", "host"])
    data = copy.deepcopy(TOY) if src is None else yaml.safe_load((PROFILE_DIR / f"{src}.yaml").read_text())
    log = [f"profile from {src or 'toy'}"]
    leaves = list(_leaves(data))
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(leaves)
        cur = data
        for k in path[:-1]:
            cur = cur[k]
        v = _value(rng, str(path[-1]))
        cur[path[-1]] = v
        log.append(f"profile {'.'.join(map(str, path))} = {v!r}")
    p = tmp / f"prof-{n}.yaml"
    p.write_text(yaml.safe_dump(data))
    return p, log


def _trace(rng: random.Random, tmp: Path, n: int) -> tuple[Path, str]:
    r = rng.random()
    if r < 0.15:
        text = rng.choice(["", "\n\n", "time_s,throughput_mbps\n0,1\n", "\x00\x01\x02garbage", "a,b,c\n1,2,3\n",
                           "time_s,throughput_mbps,rtt_ms\n"])
    else:
        rows, t = ["time_s,throughput_mbps,rtt_ms"], 0.0
        for _ in range(rng.randint(1, 6)):
            t += rng.choice([0.0005, 0.01, 0.5, 3.0, -1.0, 0.0])
            thr = rng.choice([0, 1e-9, 0.5, 50, 1e7, -5, "nan", "inf", "x", ""])
            rtt = rng.choice([0, 3, 1e6, -1, "nan", ""])
            rows.append(f"{t:g},{thr},{rtt}")
        text = "\n".join(rows) + "\n"
    p = tmp / f"trace-{n}.csv"
    p.write_text(text)
    return p, text


def _cli_case(rng: random.Random, tmp: Path, n: int) -> list:
    ints = ["0", "-1", "1", "2", "8", "129", "5000", "10000000000", "x", "1.5", ""]
    models = ["tiny-gpt2", "tiny-bloom", "tiny-llama", "bloom-9000", "", str(DATA / "onnx" / "hf_gpt2_tiny.onnx"),
              str(tmp / "nope.onnx"), str(ROOT / "README.md")]
    profs = ["kirin-990", "host", "pixel-99", "", str(ROOT / "README.md"), str(tmp)]
    out = str(tmp / f"cli-out-{n}")
    c = rng.randrange(9)
    if c == 0:
        argv = ["model", "inspect", rng.choice(models), "--seq-len", rng.choice(ints)]
        if rng.random() < 0.5:
            argv += ["--dtype", rng.choice(["fp16", "int8", "int4"])]
        if rng.random() < 0.3:
            argv += ["--batch", rng.choice(ints)]
    elif c == 1:
        argv = ["model", "split", rng.choice(models[:4]), "--out", out, "--seq-len", rng.choice(["4", "8", "200", "0"])]
        argv += rng.choice([["--segments", rng.choice(ints[:6])], ["--boundaries", rng.choice(["0,1", "1,2", "0,9",
                                                                                              "2,1", "a", ","])]])
        if rng.random() < 0.3:
            argv.append("--verify")
    elif c == 2:
        argv = ["profile", "predict", rng.choice(profs), rng.choice(models[:5]), "--seq-len", rng.choice(ints[:7])]
        if rng.random() < 0.6:
            argv += ["--threads", rng.choice(ints)]
    elif c == 3:
        argv = ["profile", "show", rng.choice(profs)]
    elif c == 4:  # never a real profiling run: always one bad argument
        flag = rng.choice(["--runs", "--threads"])
        argv = ["profile", "host", "--out", rng.choice([str(tmp), "/proc/x/h.yaml", str(tmp / "h.yaml")]), flag,
                rng.choice(["0", "-3", "x", "1.5"] if flag == "--runs" else ["0", "x", "1,a", "999", ""])]
    elif c == 5:  # never a real benchmark: a bad name or a flag it does not take
        argv = rng.choice([["bench", rng.choice(["nonsense", "", "ALLOCATOR"])],
                           ["bench", rng.choice(["paper", "balancer", "solve_time"]), rng.choice(["--check", "--write"])],
                           ["bench", "allocator", "--only", rng.choice(["nope", ",", "x,y"])]])
    elif c == 6:
        argv = ["run", rng.choice(["demo", "nope", str(tmp), str(ROOT / "README.md")]), "--out",
                rng.choice([out, str(ROOT / "README.md"), "/proc/x"]), "--set",
                rng.choice(["workload.requests=1", "devices[9].absent=true", "model.x=1", "=", "a..b=1",
                            "devices[0]=3", "workload=[]", "seed=.nan", "devices.0.count=2008"])]
        if rng.random() < 0.3:
            argv += ["--seed", rng.choice(ints)]
    elif c == 7:
        argv = ["allocate", rng.choice(["demo", "nope"]), "--no-simulate", "--strategy",
                rng.choice(["milp", "all", "foo", "", "uniform,bar"]), "--set",
                rng.choice(["workload.requests=1", "allocation.objective=speed", "devices[0].rssi_dbm=-200"])]
    else:
        argv = rng.choice([["run", "--from-manifest", str(tmp / "none.json")], ["frobnicate"], [], ["model"],
                           ["run", "demo", "--from-manifest", "x"], ["--version"], ["profile", "list", "--json"]])
    return argv


def _check_outputs(out: Path) -> list[str]:
    bad = []
    if not out.is_dir():
        return bad
    for f in out.iterdir():
        if f.suffix == ".json":
            try:
                json.loads(f.read_text(), parse_constant=lambda x: (_ for _ in ()).throw(ValueError(x)))
            except ValueError as e:
                bad.append(f"{f.name}: not strict JSON ({e})")
        elif f.suffix == ".csv":
            for row in csv.reader(open(f)):
                for cell in row:
                    if cell.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
                        bad.append(f"{f.name}: {cell!r}")
                        break
    return bad


def make_case(rng: random.Random, tmp: Path, n: int, bases: list[dict], fields: dict) -> tuple[list, list[str]]:
    kind = rng.random()
    PLAUSIBLE[0] = rng.choice([0.3, 0.3, 0.9])
    if kind < 0.25:
        argv = _cli_case(rng, tmp, n)
        return argv, [f"cli {argv}"]
    d = copy.deepcopy(rng.choice(bases))
    log = [f"base {d['name']}"]
    if kind < 0.4:
        p, plog = _mutated_profile(rng, tmp, n)
        d["devices"][0]["profile"] = str(p)
        log += plog
    elif kind < 0.5:
        p, text = _trace(rng, tmp, n)
        d["network"] = {"kind": "trace", "trace": str(p), "on_end": rng.choice(["hold", "loop"])}
        log.append(f"trace {text!r}")
    if kind >= 0.35 or rng.random() < 0.5:
        log += _mutate_scenario(rng, d, fields)
    sc = tmp / f"case-{n}.yaml"
    try:
        sc.write_text(yaml.safe_dump(d))
    except yaml.YAMLError:
        sc.write_text(json.dumps(d, default=str))
    out = tmp / f"out-{n}"
    argv = [rng.choice(["run", "run", "run", "allocate"]), sc]
    argv += ["--out", out] if argv[0] == "run" else ["--no-simulate"]
    return argv, log


@pytest.mark.slow
def test_random_and_adversarial_inputs_exit_0_2_or_3_with_one_line(tmp_path, capsys, monkeypatch):
    n_cases = int(os.environ.get("LLSIM_FUZZ_CASES", DEFAULT_CASES))
    seed = int(os.environ.get("LLSIM_FUZZ_SEED", 0))
    rng = random.Random(seed)
    bases, fields = _bases(tmp_path), _schema_fields()
    monkeypatch.setenv("LLSIM_HOST_MEMORY_GB", "4")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # bug reports (if any) land here
    old = signal.signal(signal.SIGALRM, _alarm)
    failures, codes, worst = [], {}, (0.0, None)
    t_all = time.perf_counter()
    try:
        for n in range(n_cases):
            argv, log = make_case(rng, tmp_path, n, bases, fields)
            capsys.readouterr()
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
            try:
                code, out, err = run_cli(argv, capsys)
            except Timeout:
                failures.append((n, log, f"no answer within {CASE_TIMEOUT_S:g} s"))
                continue
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            dt = time.perf_counter() - t0
            worst = max(worst, (dt, n))
            codes[code] = codes.get(code, 0) + 1
            lines = [ln for ln in err.splitlines() if ln.strip()]
            problem = None
            if code not in (0, 2, 3):
                problem = f"exit {code}: {err.strip()[:500]}"
            elif "Traceback" in err or "Traceback" in out:
                problem = "a traceback"
            elif code in (2, 3) and not (len(lines) == 1 and lines[0].startswith("llsim: ")):
                problem = f"exit {code} with {len(lines)} lines on stderr: {err[:500]!r}"
            elif argv[:1] == ["run"] and "--out" in [str(a) for a in argv]:
                bad = _check_outputs(Path(str(argv[[str(a) for a in argv].index("--out") + 1])))
                if bad:
                    problem = "; ".join(bad[:3])
            if problem:
                failures.append((n, log, problem))
    finally:
        signal.signal(signal.SIGALRM, old)
    total = time.perf_counter() - t_all
    print(f"fuzz: {n_cases} cases (seed {seed}) in {total:.1f} s, exit codes {dict(sorted(codes.items()))}, "
          f"slowest case {worst[1]} {worst[0]:.1f} s")
    assert not failures, "\n".join(f"case {n} (seed {seed}): {p}\n    " + "\n    ".join(log) for n, log, p in failures[:8])
