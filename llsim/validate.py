"""Checks of a scenario beyond its schema, and how every problem is reported.

The pydantic schema (:mod:`llsim.scenario`) checks each field on its own: types, finite numbers,
physical ranges. This module checks what needs several fields or other files, at load time
(before any planning or simulation):

* every profile resolves and validates (its own file's errors are reported), a device's
  ``threads`` is a thread count its profile has coefficients for;
* device names are unique after expansion (``<profile>-<k>`` counting across all entries of the
  same profile, or the entry's ``name``, with ``-<k>`` appended when that entry has count > 1);
* every reference to a device (events, explicit stages, ``allocation.header``,
  ``network.ap_device``) names one; a ``join`` brings back a device that is not present then;
* the strategies exist; the model is a zoo name or an existing ``.onnx`` file and its positions
  hold the workload's context; a trace file exists and parses;
* the host memory the run will need (:func:`host_memory_estimate`) fits this machine.

Every problem found is reported at once, each naming its source: the file and field, or the
``--set`` that caused it (:class:`Overrides`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llsim.errors import LLSimError
from llsim.yamlio import load_yaml  # noqa: F401 - (re-exported) moved below the device layer, which reads profiles

#: 802.11 association IDs run 1..2007: an access point (or a Wi-Fi Direct group owner) serves at most
#: 2007 stations; llsim holds every cluster to that bound.
MAX_DEVICES = 2007
MAX_REPORTED = 40  # problems listed in one message
MAX_ONNX_CONTEXT = 16_384  # an ONNX model is ingested at every step's length: one onnxruntime run each
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


# ---- --set overrides and the source of a problem ----------------------------------------------------
@dataclass
class Overrides:
    """The ``--set`` items applied to a scenario, with the field path each one wrote."""

    items: list[tuple[tuple, str]] = field(default_factory=list)  # (path, "--set 'a.b=1'" or "--seed 3")

    def source(self, loc: tuple) -> str | None:
        """The ``--set`` that wrote ``loc`` or a section containing it (the last one wins)."""
        for path, text in reversed(self.items):
            if tuple(loc[:len(path)]) == tuple(path):
                return text
        for path, text in reversed(self.items):  # a problem of a section one of its fields was set in
            if len(loc) < len(path) and tuple(path[:len(loc)]) == tuple(loc) and loc:
                return text
        return None


_SET_PART = re.compile(r"^([^\[\]]*)((?:\[-?\d+\])*)$")


def parse_set_path(path: str, text: str) -> list[str | int]:
    """``devices[3].absent`` or ``devices.3.absent`` -> ["devices", 3, "absent"] (numbers stay strings
    in the dotted form: whether they index a list depends on the data)."""
    if not path or path.strip() != path:
        raise LLSimError(f"--set '{text}': expected path.to.field=value (e.g. workload.requests=4)")
    keys: list[str | int] = []
    for part in path.split("."):
        m = _SET_PART.match(part)
        if not m or (not m.group(1) and not m.group(2)):
            raise LLSimError(f"--set '{text}': '{part}' is not a field name or name[index] in '{path}'")
        if m.group(1):
            keys.append(m.group(1))
        keys += [int(x) for x in re.findall(r"\[(-?\d+)\]", m.group(2))]
    return keys


def apply_set(data: dict, item: str, ov: Overrides) -> None:
    """Apply one ``--set path=value`` to the raw scenario mapping; errors name the ``--set``."""
    import yaml

    if "=" not in item:
        raise LLSimError(f"--set '{item}': expected path.to.field=value (e.g. workload.requests=4)")
    path, raw = item.split("=", 1)
    keys = parse_set_path(path, item)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    cur: Any = data
    done: list[str | int] = []
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        where = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in done).lstrip(".") or "the top level"
        if isinstance(cur, list):
            try:
                idx = int(k)
            except (TypeError, ValueError):
                raise LLSimError(f"--set '{item}': {where} is a list; '{k}' is not an index of it") from None
            if not 0 <= idx < len(cur):
                raise LLSimError(f"--set '{item}': {where} has {len(cur)} entr{'y' if len(cur) == 1 else 'ies'}"
                                 f" (indices 0..{len(cur) - 1}); there is no index {idx}")
            k = idx
        elif isinstance(cur, dict):
            if isinstance(k, int):
                raise LLSimError(f"--set '{item}': {where} is a section of fields, not a list; "
                                 f"[{k}] does not index it")
        else:
            raise LLSimError(f"--set '{item}': {where} is a value ({type(cur).__name__} {cur!r}), not a section "
                             f"with fields or a list; set {where}=... instead")
        done.append(k)
        if last:
            cur[k] = value
        else:
            nxt = cur[k] if isinstance(cur, list) else cur.get(k)
            if nxt is None:
                if isinstance(cur, list):
                    raise LLSimError(f"--set '{item}': entry {where}[{k}] is empty")
                nxt = cur[k] = {}
            cur = nxt
    ov.items.append((tuple(done), f"--set '{item}'"))


# ---- formatting problems ------------------------------------------------------------------------
def fmt_loc(loc: tuple) -> str:
    return "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".")


def report(where: str, problems: list[tuple[tuple, str]], ov: Overrides | None = None) -> str:
    """One line: ``FILE: field 'a': msg`` or ``N problems: FILE: field 'a': msg; --set 'x=1': field 'x': msg``."""
    ov = ov or Overrides()
    from_file, from_set = [], []
    seen = set()
    for loc, msg in problems:
        key = (tuple(loc), msg)
        if key in seen:
            continue
        seen.add(key)
        src = ov.source(tuple(loc))
        text = (f"field '{fmt_loc(loc)}': " if loc else "") + msg
        (from_set if src else from_file).append((src, text))
    parts = []
    if from_file:
        parts.append(f"{where}: " + "; ".join(t for _, t in from_file))
    for src, t in from_set:
        parts.append(f"{src}: {t}")
    n = len(from_file) + len(from_set)
    text = (f"{n} problems: " if n > 1 else "") + "; ".join(parts)
    if n > MAX_REPORTED:  # every kind of problem shows among the first ones; thousands would not be read
        shown = [t for _, t in (from_file + from_set)][:MAX_REPORTED]
        text = f"{n} problems, the first {MAX_REPORTED}: {where}: " + "; ".join(shown)
    return text


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---- device names ------------------------------------------------------------------------------------
def expanded_names(specs, profile_names: list[str]) -> list[tuple[str, int]]:
    """(name, entry index) of every device, in expansion order. Unnamed entries give
    ``<profile>-<k>``, k counting across all entries of the same profile; a named entry gives its
    name, with ``-<k>`` (k = 0..count-1) when its count is > 1."""
    out, per_profile = [], {}
    for i, (spec, pname) in enumerate(zip(specs, profile_names)):
        for k in range(spec.count):
            if spec.name:
                name = spec.name if spec.count == 1 else f"{spec.name}-{k}"
            else:
                j = per_profile.get(pname, 0)
                per_profile[pname] = j + 1
                name = f"{pname}-{j}"
            out.append((name, i))
    return out


# ---- the checks ----------------------------------------------------------------------------------------
def check_scenario(sc) -> list[tuple[tuple, str]]:
    """Cross-field and cross-file problems of a schema-valid scenario; resolves relative paths
    (profiles, ONNX model, trace) against the scenario's directory as a side effect."""
    from llsim.device.profile import list_profiles, load_profile, resolve_profile_path

    problems: list[tuple[tuple, str]] = []
    base = sc.path.parent if sc.path else Path.cwd()

    # profiles: resolvable, valid, thread counts they have
    profiles: list = []
    for i, d in enumerate(sc.devices):
        prof = None
        cand = base / d.profile
        if cand.suffix in (".yaml", ".yml") and cand.exists():
            d.profile = str(cand)
        try:
            resolve_profile_path(d.profile)
        except LLSimError:
            problems.append((("devices", i, "profile"), f"unknown profile '{d.profile}'; use one of "
                             f"{', '.join(list_profiles())} or a path to a profile YAML"))
        else:
            try:
                prof = load_profile(d.profile)
            except LLSimError as e:
                problems.append((("devices", i, "profile"), f"profile '{d.profile}' is invalid: {_one_line(e)}"))
        profiles.append(prof)
        if prof is not None and d.threads is not None and d.threads not in prof.compute.threads:
            problems.append((("devices", i, "threads"), f"{d.threads} threads: profile {prof.name} has coefficients "
                             f"for {', '.join(map(str, sorted(prof.compute.threads)))} thread(s) only"))
    n_dev = sum(d.count for d in sc.devices)
    if n_dev > MAX_DEVICES:
        problems.append((("devices",), f"{n_dev} devices: at most {MAX_DEVICES} (802.11 association IDs 1-2007 "
                         "bound the stations of one access point)"))
        return problems
    if any(p is None for p in profiles):
        return problems  # names, references and sizes need every profile

    names = expanded_names(sc.devices, [p.name for p in profiles])
    first: dict[str, int] = {}
    for name, i in names:
        if name in first:
            j = first[name]
            problems.append((("devices", i, "name"), f"devices[{j}] and devices[{i}] both give a device the name "
                             f"'{name}'; names must be unique (set 'name' on one of them)"))
        else:
            first[name] = i
    index = {n: k for k, (n, _) in enumerate(names)}
    absent = [sc.devices[i].absent for _, i in names]

    def ref(loc: tuple, r) -> int | None:
        if isinstance(r, bool):
            r = str(r)
        if isinstance(r, int):
            if 0 <= r < n_dev:
                return r
            problems.append((loc, f"device {r} is not an index 0..{n_dev - 1}"))
            return None
        if r in index:
            return index[r]
        shown = ", ".join(list(index)[:8]) + (", ..." if n_dev > 8 else "")
        problems.append((loc, f"no device '{r}' (devices: {shown}; or an index 0..{n_dev - 1})"))
        return None

    # events: references, joins of a device that is there
    there = {k: not absent[k] for k in range(n_dev)}
    timed = sorted(((getattr(e, "at", 0.0), i, e) for i, e in enumerate(sc.events)), key=lambda x: (x[0], x[1]))
    may_leave: set[int] = set()
    for _, i, e in timed:
        if hasattr(e, "device"):
            k = ref(("events", i, "device"), e.device)
            if k is None:
                continue
            if e.kind == "leave":
                there[k] = False
            elif e.kind == "rssi":
                may_leave.add(k)  # below MCS0's sensitivity the phone leaves
            elif e.kind == "join":
                if there[k] and k not in may_leave:
                    problems.append((("events", i, "device"), f"join of {names[k][0]} at t={e.at:g}s, but it is "
                                     "present then (not 'absent: true' and no earlier leave); remove the event or "
                                     "mark the device absent"))
                there[k] = True
        else:
            for j, r in enumerate(getattr(e, "devices", None) or []):
                ref(("events", i, "devices", j), r)
        if getattr(e, "end_s", None) is not None and e.end_s <= e.start_s:
            problems.append((("events", i, "end_s"), f"{e.end_s:g} is not after start_s {e.start_s:g}"))

    # allocation
    a = sc.allocation
    for i, st in enumerate(a.stages or []):
        k = ref(("allocation", "stages", i, "device"), st.device)
        if k is not None and absent[k]:
            problems.append((("allocation", "stages", i, "device"), f"{names[k][0]} is marked absent at the start"))
    if a.header is not None:
        k = ref(("allocation", "header"), a.header)
        if k is not None and absent[k]:
            problems.append((("allocation", "header"), f"{names[k][0]} is marked absent at the start"))
    if all(absent):
        problems.append((("devices",), "every device is marked absent: at least one must be present at the start"))
    net = sc.network
    if net.kind == "wifi_direct" and net.ap_device >= n_dev:
        problems.append((("network", "ap_device"), f"device {net.ap_device} is not an index 0..{n_dev - 1}"))

    # model and context
    from llsim.model.load import is_onnx_path
    from llsim.model.zoo import ZOO

    w = sc.workload
    if is_onnx_path(sc.model):
        p = Path(sc.model).expanduser()
        if not p.is_absolute() and (base / p).exists():
            p = base / p
        if not p.is_file():
            problems.append((("model",), f"'{sc.model}': no such ONNX file (a zoo name: see `llsim model list`)"))
        else:
            sc.model = str(p)
            if w.mode == "kv_cache":
                problems.append((("workload", "mode"), "kv_cache needs a zoo model (an ONNX file without KV-cache "
                                 "inputs is simulated in recompute mode); set workload.mode: recompute"))
            else:
                problems += _onnx_context(p, w)
    elif sc.model.lower() not in ZOO:
        problems.append((("model",), f"unknown model '{sc.model}': not a zoo name (see `llsim model list`) and not "
                         "an .onnx path"))
    else:
        cfg = ZOO[sc.model.lower()]
        ctx = w.prompt_tokens + w.new_tokens - 1
        if ctx > cfg.max_positions:
            problems.append((("workload",), f"prompt_tokens + new_tokens - 1 = {ctx} positions, but {cfg.name} has "
                             f"{cfg.max_positions}; lower prompt_tokens or new_tokens"))

    # a trace file: there and valid now, not at simulated time t
    if net.kind == "trace":
        from llsim.network.trace import load_trace

        tp = net.resolve_path(base)
        try:
            load_trace(tp, net.on_end)
        except LLSimError as e:
            problems.append((("network", "trace"), _one_line(e)))
        else:
            sc.network = net.model_copy(update={"trace": str(tp.resolve())})
    if problems:
        return problems

    need, parts = host_memory_estimate(sc, n_dev)
    have = available_memory_bytes()
    if have is not None and need > have:
        problems.append(((), f"this scenario needs about {need / 1e9:.1f} GB of host memory ({parts}), more than the "
                         f"{have / 1e9:.1f} GB this machine has available; lower the device count or "
                         "workload.requests x new_tokens"))
    return problems


def _onnx_context(path: Path, w) -> list[tuple[tuple, str]]:
    """An ONNX model's positions are not declared: run it once at the longest step of the workload."""
    from llsim.model.onnx_graph import analyse, load_proto

    ctx = w.prompt_tokens + w.new_tokens - 1
    if ctx > MAX_ONNX_CONTEXT:
        return [(("workload",), f"prompt_tokens + new_tokens - 1 = {ctx} tokens: an ONNX model is analysed by running "
                 f"onnxruntime at each step's length (recompute mode), at most {MAX_ONNX_CONTEXT:,} tokens; lower "
                 "prompt_tokens or new_tokens")]
    try:
        om = analyse(load_proto(path), w.batch, ctx, path)
    except LLSimError as e:
        return [(("model",), _one_line(e))]
    except (ValueError, OverflowError, MemoryError) as e:  # shapes too large for onnx / numpy
        return [(("workload",), f"{path.name} cannot be analysed at {ctx} tokens (prompt_tokens + new_tokens - 1): "
                 f"{_one_line(e)[:160]}")]
    if om.run_error and "out of" in om.run_error and "bounds" in om.run_error:
        return [(("workload",), f"onnxruntime cannot run {path.name} at {ctx} tokens (prompt_tokens + new_tokens - "
                 f"1): {om.run_error[:160]}; lower prompt_tokens or new_tokens")]
    return []


# ---- host memory ---------------------------------------------------------------------------------
# Bytes per item, from peak RSS of runs on CPython 3.11 (tests/test_validation.py checks the estimate
# against measured runs): a tokens.csv row, a timeline record (capped at TIMELINE_CAP), a device
# (profile, cost model, station), a (source, destination) route slot, a module of a step's graph.
TOKEN_ROW_B = 450
TIMELINE_ROW_B = 350
TIMELINE_CAP = 400_000
DEVICE_B = 50_000
ROUTE_SLOT_B = 8
CELL_B = 8
GRAPH_B_PER_MODULE = 12_000
BASE_B = 80e6  # the interpreter with numpy, onnx, onnxruntime, highs, pydantic, rich (peak RSS of a tiny run)


def host_memory_estimate(sc, n_devices: int) -> tuple[float, str]:
    """Bytes of host memory a run of ``sc`` needs, roughly (within about 2x: its largest terms), and
    a breakdown of the two largest."""
    from llsim.model.load import is_onnx_path
    from llsim.model.zoo import ZOO

    w = sc.workload
    n_mod = ZOO[sc.model.lower()].n_modules if not is_onnx_path(sc.model) else 64
    tokens = w.requests * w.new_tokens
    stages = min(n_devices, n_mod)
    terms = {
        "token rows": tokens * TOKEN_ROW_B,
        "timeline": min(tokens * (2 * stages + 1), TIMELINE_CAP) * TIMELINE_ROW_B,
        "devices": n_devices * DEVICE_B,
        "network routes": n_devices * n_devices * ROUTE_SLOT_B * 2,
        "planning matrices": n_devices * n_mod * CELL_B * 8,
        "step graphs": (w.new_tokens if w.mode == "recompute" else 3) * n_mod * GRAPH_B_PER_MODULE,
    }
    power_save = getattr(getattr(sc.network, "power_save", None), "enabled", False)
    if power_save and w.in_flight == 1 and n_devices > 1:  # the allocator replays every step
        terms["per-step costs"] = w.new_tokens * n_devices * n_mod * CELL_B * 2
    need = BASE_B + sum(terms.values())
    big = sorted(terms.items(), key=lambda kv: -kv[1])[:2]
    return need, ", ".join(f"{k} {v / 1e9:.1f} GB" for k, v in big)


def available_memory_bytes() -> float | None:
    """MemAvailable from /proc/meminfo (Linux), else None (not checked)."""
    override = os.environ.get("LLSIM_HOST_MEMORY_GB")  # for tests and for users who know better
    if override:
        try:
            return float(override) * 1e9
        except ValueError:
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None
