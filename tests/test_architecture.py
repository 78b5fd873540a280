"""Structure checks (ast): llsim/kernel.py is the only module touching simpy's internals, and no
function in llsim/sim/ reaches 60 lines."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "llsim"
KERNEL = PKG / "kernel.py"
#: private fields of simpy's Event / Environment / Process / Timeout / Condition / Resource
SIMPY_PRIVATE = {"_ok", "_value", "_defused", "_now", "_queue", "_eid", "_active_proc", "_generator", "_target",
                 "_delay", "_evaluate", "_events", "_count", "_env", "_put_queue", "_get_queue"}
SIMPY_INTERNAL_NAMES = {"PENDING", "NORMAL", "URGENT", "Initialize", "Interruption"}
#: object.__new__ on something that is not a simpy event (a frozen dataclass filled without __init__)
NEW_ALLOWED = {("network/wifi.py", "TransferRecord")}


def _modules():
    return sorted(p for p in PKG.rglob("*.py") if p != KERNEL)


def _simpy_violations(path: Path) -> list[str]:
    rel = path.relative_to(PKG).as_posix()
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in SIMPY_PRIVATE:
            out.append(f"{rel}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("simpy"):
            out += [f"{rel}:{node.lineno}: imports {a.name}" for a in node.names if a.name in SIMPY_INTERNAL_NAMES]
        elif isinstance(node, ast.Attribute) and node.attr in SIMPY_INTERNAL_NAMES and \
                isinstance(node.value, ast.Attribute) and node.value.attr == "events":
            out.append(f"{rel}:{node.lineno}: simpy.events.{node.attr}")
        elif isinstance(node, ast.Attribute) and node.attr == "__new__" and \
                isinstance(node.value, ast.Name) and node.value.id == "object":
            call_args = _call_args_of(path, node)
            if not call_args or not all((rel, a) in NEW_ALLOWED for a in call_args):
                out.append(f"{rel}:{node.lineno}: object.__new__")
    return out


def _call_args_of(path: Path, attr: ast.Attribute) -> list[str]:
    """Names passed to ``object.__new__(...)`` where it is called directly (else [])."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.lineno == attr.lineno and node.func.col_offset == attr.col_offset:
            return [a.id for a in node.args if isinstance(a, ast.Name)]
    return []


def test_only_the_kernel_touches_simpy_internals():
    bad = [v for p in _modules() for v in _simpy_violations(p)]
    assert not bad, "simpy internals outside llsim/kernel.py:\n" + "\n".join(bad)


def test_the_check_sees_simpy_internals(tmp_path):
    # the check itself: it flags each kind of access it is meant to flag
    p = PKG / "_probe_for_test.py"
    try:
        p.write_text("from simpy.events import PENDING\nimport simpy.events\n_new = object.__new__\n"
                     "def f(env, ev):\n    ev._ok = True\n    return env._now, simpy.events.NORMAL\n")
        got = _simpy_violations(p)
    finally:
        p.unlink()
    assert len(got) == 5, got


def function_lengths(root: Path) -> list[tuple[int, str]]:
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(ROOT)}:{node.name}"))
    return sorted(out, reverse=True)


def test_no_function_in_llsim_sim_reaches_60_lines():
    lengths = function_lengths(PKG / "sim")
    assert lengths and lengths[0][0] < 60, f"longest functions: {lengths[:5]}"


if __name__ == "__main__":  # the longest functions of llsim/sim/
    for n, name in function_lengths(PKG / "sim")[:10]:
        print(n, name)
