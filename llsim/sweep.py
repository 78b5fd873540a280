"""Parameter sweeps: ``llsim sweep SCENARIO --grid PATH=V1,V2 ... [--seeds 1-5] [--jobs K] --out DIR``.

A sweep is the cartesian product of its ``--grid`` axes (and of one ``--zip`` axis of paired
values) times its seeds. Each point is set on the scenario with the override syntax of
``llsim run --set`` (:func:`llsim.scenario.apply_overrides`: the same paths, values parsed as YAML)
and is a normal run directory, ``DIR/points/<name>``, named from its parameters and seed (a readable
part and a hash of the exact assignments: the same command always gives the same names).

* **Resumable**: a point is done when its directory exists: it is written in a temporary directory
  beside it and renamed when complete, so an interrupted point leaves no directory and runs again;
  the same command skips points already done (``--retry-failed`` runs failed ones again).
* **Failures** are recorded per point and do not stop the sweep: the point's directory gets
  ``error.txt`` (message and traceback) and ``point.json`` says ``status: failed``; a run that ended
  with an error (e.g. a memory overflow) keeps its partial results beside them.
* **Backends**: ``local`` runs ``--jobs`` processes on this machine; ``ray`` runs each point as a Ray
  task (``ray.init(address=...)``; ``pip install 'llsim[ray]'``); the worker sends the run's files
  back and this process writes them, so the cluster needs no shared file system, only llsim.
* ``DIR/sweep.json`` records the sweep; ``DIR/sweep.csv`` is :func:`llsim.results.load_sweep`'s
  table, rewritten at the end (also after an interruption).
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llsim.errors import LLSimError

WALL_COLUMNS = ("wall_s", "wall_time_s", "events_per_wall_s")  # what differs between two runs of a point


# ---- the grid ------------------------------------------------------------------------------------
def split_values(text: str) -> list[str]:
    """``V1,V2,...`` split at the commas outside brackets, braces and quotes (so YAML flow values such
    as ``[1, 2]`` or ``{a: 1, b: 2}`` are one value)."""
    out, cur, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch in "[{(":
            depth += 1
            cur.append(ch)
        elif ch in "]})":
            depth -= 1
            cur.append(ch)
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_axis(item: str, flag: str = "--grid") -> tuple[str, list[str]]:
    if "=" not in item:
        raise LLSimError(f"{flag} '{item}': expected path.to.field=V1,V2,... (the paths of llsim run --set)")
    path, raw = item.split("=", 1)
    path = path.strip()
    values = split_values(raw)
    if not path or any(v == "" for v in values):
        raise LLSimError(f"{flag} '{item}': expected path.to.field=V1,V2,... with no empty value")
    if len(set(values)) < len(values):
        raise LLSimError(f"{flag} {path}: a value is given twice ({raw})")
    return path, values


def parse_seeds(text: str | None) -> list[int] | None:
    """``1-5``, ``1,3,7``, ``2`` or a mix (``1-3,10``) -> seeds in order, each once."""
    if text is None:
        return None
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if re.fullmatch(r"-?\d+-\d+", part):
                a, b = part.rsplit("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                seeds += range(lo, hi + 1)
            else:
                seeds.append(int(part))
    except ValueError:
        raise LLSimError(f"--seeds '{text}': expected seeds like 1-5, 1,3,7 or 1-3,10") from None
    return list(dict.fromkeys(seeds))


def _value(raw: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _safe(text: str, n: int = 24) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:n] or "x"


def point_name(assign: list[tuple[str, str]], seed: int) -> str:
    """Deterministic directory name of a point: readable, then a hash of the exact assignments."""
    h = hashlib.sha1(json.dumps([[list(a) for a in assign], seed]).encode()).hexdigest()[:8]
    slug = "_".join(f"{_safe(p, 32)}={_safe(v)}" for p, v in assign)[:120]
    return f"{slug}_seed{seed}_{h}" if slug else f"seed{seed}_{h}"


@dataclass
class Point:
    name: str
    assign: list[tuple[str, str]]  # (path, raw value) in the order they are applied
    seed: int

    @property
    def sets(self) -> list[str]:
        return [f"{p}={v}" for p, v in self.assign]

    @property
    def values(self) -> dict:
        return {p: _value(v) for p, v in self.assign}


def combinations(grid: list[tuple[str, list[str]]], zipped: list[tuple[str, list[str]]]) -> list[list[tuple[str, str]]]:
    """Every assignment of the grid: the cartesian product of its axes, the zipped paths one more axis."""
    paths = [p for p, _ in grid] + [p for p, _ in zipped]
    dup = {p for p in paths if paths.count(p) > 1}
    if dup:
        raise LLSimError(f"--grid/--zip: {', '.join(sorted(dup))} given twice")
    if zipped:
        n = {len(v) for _, v in zipped}
        if len(n) > 1:
            raise LLSimError("--zip: every zipped path needs as many values (" +
                             ", ".join(f"{p}: {len(v)}" for p, v in zipped) + ")")
    axes = [[[(p, v)] for v in vs] for p, vs in grid]
    if zipped:
        axes.append([[(p, vs[i]) for p, vs in zipped] for i in range(len(zipped[0][1]))])
    return [[a for part in combo for a in part] for combo in itertools.product(*axes)] if axes else [[]]


def expand(grid: list[tuple[str, list[str]]], zipped: list[tuple[str, list[str]]], seeds: list[int]) -> list[Point]:
    """Every point of the grid, each with every seed (grid order, then seeds)."""
    return [Point(point_name(a, s), a, s) for a in combinations(grid, zipped) for s in seeds]


# ---- running one point ---------------------------------------------------------------------------
@dataclass
class Task:
    """What a worker needs to run a point (picklable: the scenario is already validated)."""

    point: Point
    scenario: object | None  # llsim.scenario.Scenario, or None when it did not validate
    invalid: str | None  # the validation error
    timeline: bool = True


@contextlib.contextmanager
def _stdout_to_stderr():
    """Anything a point prints (Python or C level) goes to stderr: stdout stays the command's own."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _record(tmp: Path, task: Task, status: str, error: str | None, detail: str | None, wall: float) -> dict:
    pt = task.point
    info = {"name": pt.name, "seed": pt.seed, "assign": [list(a) for a in pt.assign], "values": pt.values,
            "status": status, "error": error, "wall_s": wall}
    if error is not None:
        (tmp / "error.txt").write_text(error + "\n" + (("\n" + detail) if detail else ""))
    (tmp / "point.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    return info


def execute(task: Task, tmp: Path) -> dict:
    """Run one point into the (existing, empty) directory ``tmp``; never raises for the point's own
    failure (recorded in ``point.json`` and ``error.txt``)."""
    from llsim.judge.run import run_to_dir

    t0 = time.perf_counter()
    error = detail = None
    if task.scenario is None:
        error = task.invalid
    else:
        try:
            with _stdout_to_stderr():
                res, _, _ = run_to_dir(task.scenario, tmp, timeline=task.timeline)
            error = res.error
        except LLSimError as e:
            error = str(e)
        except Exception as e:  # a bug or a resource limit in one point must not stop the sweep
            error = f"{type(e).__name__}: {e}"
            detail = traceback.format_exc()
    return _record(tmp, task, "failed" if error else "ok", error, detail, time.perf_counter() - t0)


def _finish(tmp: Path, final: Path) -> None:
    """Make a complete point directory visible in one step (a rename in the same directory)."""
    try:
        tmp.rename(final)
    except OSError:
        if (final / "point.json").is_file():  # done meanwhile by another process: keep that one
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)


def run_local(task: Task, points_dir: str) -> dict:
    """Worker of the local backend: writes the point's directory itself (same file system)."""
    pdir = Path(points_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{task.point.name}-", dir=pdir))
    info = execute(task, tmp)
    _finish(tmp, pdir / task.point.name)
    return info


def run_remote(task: Task) -> tuple[dict, dict[str, bytes]]:
    """Worker of the Ray backend: runs the point in a private temporary directory and returns its
    files (the driver writes them), so no shared file system is needed."""
    with tempfile.TemporaryDirectory(prefix="llsim-point-") as d:
        info = execute(task, Path(d))
        files = {str(f.relative_to(d)): f.read_bytes() for f in sorted(Path(d).rglob("*")) if f.is_file()}
    return info, files


def _write_files(points_dir: Path, name: str, files: dict[str, bytes]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=points_dir))
    for rel, data in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    final = points_dir / name
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    _finish(tmp, final)


def _worker_init() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    try:
        os.dup2(2, 1)  # a worker's stdout is stderr: nothing it prints reaches the command's stdout
    except OSError:
        pass


# ---- the sweep -----------------------------------------------------------------------------------
@dataclass
class SweepResult:
    out: Path
    total: int
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    wall_s: float = 0.0
    interrupted: bool = False
    table: object = None  # the load_sweep DataFrame
    rows: list[dict] = field(default_factory=list)  # point.json of the points run now
    parameters: list[str] = field(default_factory=list)  # the swept paths


def _digest(path: Path | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextlib.contextmanager
def _lock(out: Path):
    """One sweep process per directory at a time."""
    lock = out / ".sweep.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, PermissionError, OSError):
                lock.unlink(missing_ok=True)  # left by a sweep that is gone
                continue
            raise LLSimError(f"{out}: another llsim sweep (pid {pid}) is writing this directory; wait for it "
                             "or give another --out") from None
    else:
        raise LLSimError(f"{out}: cannot take {lock}")
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def prepare(scenario: str, grid: list[str], zipped: list[str], seeds: str | None,
            sets: list[str]) -> tuple[list[Point], list[Task], dict, object]:
    """Points and validated scenarios; raises when no point's scenario is valid (a typo in a path)."""
    from llsim.scenario import load_scenario

    seed_list = parse_seeds(seeds)
    g = [parse_axis(x) for x in grid]
    z = [parse_axis(x, "--zip") for x in zipped]
    combos = combinations(g, z)
    built = []  # (assign, seed or None, scenario or None, error)
    for a in combos:
        for s in seed_list or [None]:
            try:
                built.append((a, s, load_scenario(scenario, list(sets) + [f"{p}={v}" for p, v in a], s), None))
            except LLSimError as e:
                built.append((a, s, None, str(e)))
    valid = [b[2] for b in built if b[2] is not None]
    if not valid:
        raise LLSimError(f"no point of the sweep is a valid scenario: {built[0][3]}")
    base = valid[0]
    points, tasks = [], []
    for a, s, sc, err in built:
        seed = s if s is not None else (sc.seed if sc is not None else base.seed)  # default: the scenario's seed
        pt = Point(point_name(a, seed), a, seed)
        points.append(pt)
        tasks.append(Task(pt, sc, err))
    if len({p.name for p in points}) < len(points):
        raise LLSimError("the sweep has two points with the same parameters and seed (a seed given twice?)")
    seed_list = seed_list or sorted({p.seed for p in points})
    spec = {"scenario": str(base.path) if base.path else scenario, "scenario_sha256": _digest(base.path),
            "name": base.name, "sets": list(sets), "grid": [[p, v] for p, v in g], "zip": [[p, v] for p, v in z],
            "seeds": seed_list, "parameters": [p for p, _ in g] + [p for p, _ in z],
            "points": [p.name for p in points]}
    return points, tasks, spec, base


def _check_spec(out: Path, spec: dict) -> None:
    f = out / "sweep.json"
    if not f.is_file():
        return
    try:
        old = json.loads(f.read_text())
    except json.JSONDecodeError:
        return
    for key, what in (("scenario_sha256", "another version of the scenario file"), ("sets", "other --set overrides")):
        if old.get(key) != spec.get(key) and any((out / "points").glob("*/point.json")):
            raise LLSimError(f"{out}: its points were run with {what} ({old.get(key) if key == 'sets' else 'changed since'}); "
                             "resuming would mix the two: give another --out or delete the directory")


def run_sweep(scenario: str, grid: list[str], zipped: list[str] | None = None, seeds: str | None = None,
              sets: list[str] | None = None, out: str | Path | None = None, jobs: int = 1, backend: str = "local",
              ray_address: str | None = None, timeline: bool = True, retry_failed: bool = False,
              progress=None) -> SweepResult:
    """Run (or resume) a sweep; ``progress(info, done, total)`` is called after each point."""
    from llsim.results.reader import load_sweep

    if jobs < 1:
        raise LLSimError(f"--jobs {jobs}: must be >= 1")
    if backend not in ("local", "ray"):
        raise LLSimError(f"--backend '{backend}': use local or ray")
    sets = list(sets or [])
    points, tasks, spec, base = prepare(scenario, grid, list(zipped or []), seeds, sets)
    out = Path(out or f"runs/sweeps/{base.name}")
    pdir = out / "points"
    pdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    res = SweepResult(out, len(points), parameters=spec["parameters"])
    with _lock(out):
        _check_spec(out, spec)
        for stale in pdir.glob(".tmp-*"):  # points interrupted mid-write
            shutil.rmtree(stale, ignore_errors=True)
        (out / "sweep.json").write_text(json.dumps(spec, indent=2) + "\n")
        pending = []
        for t in tasks:
            t.timeline = timeline
            f = pdir / t.point.name / "point.json"
            if f.is_file():
                try:
                    st = json.loads(f.read_text()).get("status")
                except json.JSONDecodeError:
                    st = None
                if st == "ok" or (st == "failed" and not retry_failed):
                    res.skipped += 1
                    continue
                shutil.rmtree(pdir / t.point.name, ignore_errors=True)
            elif (pdir / t.point.name).exists():  # no point.json: not a complete point
                shutil.rmtree(pdir / t.point.name, ignore_errors=True)
            pending.append(t)
        done = res.skipped

        def finished(info):
            nonlocal done
            done += 1
            res.ran += 1
            res.failed += info["status"] != "ok"
            res.rows.append(info)
            if progress:
                progress(info, done, len(points))

        try:
            if backend == "ray":
                _run_ray(pending, pdir, ray_address, jobs, finished)
            elif jobs == 1 or len(pending) <= 1:
                for t in pending:
                    finished(run_local(t, str(pdir)))
            else:
                _run_pool(pending, pdir, jobs, finished)
        except KeyboardInterrupt:
            res.interrupted = True
        finally:
            res.wall_s = time.perf_counter() - t_start
            try:
                table = load_sweep(out)
                table.to_csv(out / "sweep.csv", index=False)
                res.table = table
            except LLSimError:
                pass
    return res


def _run_pool(pending: list[Task], pdir: Path, jobs: int, finished) -> None:
    import multiprocessing as mp
    from functools import partial

    ctx = mp.get_context("spawn")  # no fork of a process with threads (the progress bar's)
    pool = ctx.Pool(min(jobs, len(pending)), initializer=_worker_init)
    try:
        for info in pool.imap_unordered(partial(run_local, points_dir=str(pdir)), pending, chunksize=1):
            finished(info)
        pool.close()
    except BaseException:
        pool.terminate()  # the running points leave only temporary directories, removed at the next start
        raise
    finally:
        pool.join()


def _run_ray(pending: list[Task], pdir: Path, address: str | None, jobs: int, finished) -> None:
    try:
        import ray
    except ImportError:
        raise LLSimError("--backend ray needs Ray: pip install 'llsim[ray]'") from None
    started = False
    if not ray.is_initialized():
        kw = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        if address:
            kw["address"] = address
        else:
            kw["num_cpus"] = jobs if jobs > 1 else None
        with _stdout_to_stderr():  # Ray's start-up messages: never on the command's stdout
            try:
                ray.init(**kw)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise LLSimError(f"--backend ray: cannot connect to the Ray cluster"
                                 f"{' at ' + address if address else ''}: {e}") from None
        started = True
    refs: dict = {}
    try:
        remote = ray.remote(num_cpus=1, max_retries=1)(run_remote)
        refs = {remote.remote(t): t for t in pending}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            t = refs.pop(ready[0])
            try:
                info, files = ray.get(ready[0])
            except Exception as e:  # the task itself was lost (a node died): record it like a failure
                with tempfile.TemporaryDirectory() as d:
                    info = _record(Path(d), t, "failed", f"ray task failed: {type(e).__name__}: {e}",
                                   traceback.format_exc(), 0.0)
                    files = {f.name: f.read_bytes() for f in Path(d).iterdir()}
            _write_files(pdir, t.point.name, files)
            finished(info)
    finally:
        for r in refs:  # interrupted: what is still queued or running is cancelled
            with contextlib.suppress(Exception):
                ray.cancel(r, force=True)
        if started:
            with _stdout_to_stderr():
                ray.shutdown()
