"""The package layering: no llsim module imports a module of a layer above its own, nor a sibling
package of its own layer (so there is no import cycle between packages). Every import counts,
also those inside functions; they are read from the source with ``ast``.

A layer is a list of module prefixes; a module belongs to the longest prefix that matches it.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "llsim"

#: bottom to top
LAYERS: list[list[str]] = [
    ["llsim", "llsim.errors"],  # the version; the one error type
    ["llsim.registry", "llsim.yamlio", "llsim.kernel", "llsim.filehash"],  # strategy names (not imports); YAML; the clock kernel; file sha256
    ["llsim.model"],  # model graphs, ONNX, segments
    ["llsim.network", "llsim.cost"],  # link models and the simulated medium; step costs
    ["llsim.device"],  # profiles, cost models, the profiler
    ["llsim.hil"],  # real workers
    ["llsim.adb"],  # phones over ADB (they run llsim.hil's worker, reached by its client)
    ["llsim.validate"],  # cross-file checks of scenarios
    ["llsim.events"],  # the event kinds (schema + action), a registry the scenario's union is built from
    ["llsim.scenario"],  # the scenario schema
    ["llsim.cluster"],  # a scenario's devices
    ["llsim.alloc"],  # planning: problem, strategies, MILP
    ["llsim.balance"],  # runtime re-planning
    ["llsim.sim"],  # the simulator
    ["llsim.results"],  # result files
    ["llsim.judge"],  # plans judged by simulation; llsim run
    ["llsim.sweep"],  # grids of runs
    ["llsim.cli.tables", "llsim.cli.parser"],  # terminal output and argument parsing
    ["llsim.bench", "llsim.plot"],  # benchmarks and figures
    ["llsim.cli"],  # commands
    ["llsim.demo", "llsim.__main__"],  # entry points
]


def _module(path: Path) -> str:
    parts = ("llsim",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, mod: str):
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".")[: len(mod.split(".")) - (node.level - 1) - (0 if is_pkg else 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            yield name, node.lineno
            for a in node.names:  # `from llsim import registry` imports the module llsim.registry
                yield f"{name}.{a.name}", node.lineno


def _slot(mod: str) -> tuple[int, str] | None:
    best = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (mod == prefix or mod.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (i, prefix)
    return best


def test_every_module_has_a_layer():
    missing = [m for m in map(_module, ROOT.rglob("*.py")) if _slot(m) is None or _slot(m)[1] == "llsim" and m != "llsim"]
    assert not missing, f"modules in no layer (add them to LAYERS): {missing}"


def test_no_module_imports_a_layer_above_it_or_a_sibling():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        mod = _module(path)
        (li, own) = _slot(mod)
        for name, line in _imports(path, mod):
            if not name or not (name == "llsim" or name.startswith("llsim.")):
                continue
            tgt = _slot(name)
            if tgt is None or tgt[1] == own or name == "llsim":
                continue
            ti, prefix = tgt
            if ti > li or (ti == li and prefix != own):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {mod} ({own}, layer {li}) imports {name} "
                           f"({prefix}, layer {ti})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)
