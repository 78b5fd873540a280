"""A small POSIX-shell interpreter for the stand-in phone: what ``adb shell`` commands need.

It runs the command lines that llsim and adbutils send (and that a person typically types):
sequences (``;``, ``&&``, ``||``, ``&``), pipes, redirections (``>``, ``>>``, ``<``, ``2>``,
``2>&1``), quoting, ``$VAR``/``${VAR}``/``$?``/``$$``/``$!``, ``$(...)``, globs, and the toybox
and Android commands listed in :data:`BUILTINS`. Everything runs against the phone's sandbox with
the caller's uid (:mod:`llsim.adb.phonefs`); Termux's ``python`` starts this host's Python.
Unknown commands answer as Android's mksh does (``inaccessible or not found``, status 127).
"""
from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from llsim.adb.phonefs import (ROOT, SHELL, TERMUX, TERMUX_DATA, TERMUX_PKG, TERMUX_PREFIX, UID_NAMES, FSError,
                               norm)

if TYPE_CHECKING:  # pragma: no cover
    from llsim.adb.fakephone import FakePhone

SH = "/system/bin/sh"


class ShellSyntaxError(Exception):
    pass


class ExitScript(Exception):
    def __init__(self, status: int):
        self.status = status


# ---- lexer -------------------------------------------------------------------------------------
# A word is a list of parts: ("lit", text) no expansion; ("dq", text) variables expanded, no glob;
# ("raw", text) variables expanded and globbed; ("cmd", text) / ("cmdq", text) command substitution.
OPS = ("&&", "||", ";;", ">>", ";", "&", "|", ">", "<", "(", ")")


def _balanced(s: str, i: int) -> int:
    """Index just past the ')' closing the '$(' whose '(' is at s[i-1]."""
    depth, q = 1, None
    while i < len(s):
        c = s[i]
        if q:
            if c == q:
                q = None
            elif c == "\\" and q == '"':
                i += 1
        elif c in "'\"":
            q = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ShellSyntaxError("unterminated $(")


def lex(s: str) -> list[tuple]:
    toks: list[tuple] = []
    parts: list[tuple[str, str]] = []
    cur = ""  # pending raw text
    started = False

    def flush_raw():
        nonlocal cur
        if cur:
            parts.append(("raw", cur))
            cur = ""

    def end_word():
        nonlocal parts, started
        flush_raw()
        if started:
            toks.append(("word", parts))
        parts, started = [], False

    i = 0
    while i < len(s):
        c = s[i]
        if c in " \t":
            end_word()
            i += 1
        elif c == "\n":
            end_word()
            toks.append(("op", ";"))
            i += 1
        elif c == "#" and not started:
            while i < len(s) and s[i] != "\n":
                i += 1
        elif c == "'":
            j = s.find("'", i + 1)
            if j < 0:
                raise ShellSyntaxError("unterminated '")
            flush_raw()
            parts.append(("lit", s[i + 1:j]))
            started, i = True, j + 1
        elif c == '"':
            flush_raw()
            started = True
            i += 1
            buf = ""
            while True:
                if i >= len(s):
                    raise ShellSyntaxError('unterminated "')
                c = s[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < len(s) and s[i + 1] in '"\\$`\n':
                    if buf:
                        parts.append(("dq", buf))
                        buf = ""
                    parts.append(("lit", s[i + 1]))
                    i += 2
                elif c == "$" and s[i + 1:i + 2] == "(":
                    if buf:
                        parts.append(("dq", buf))
                        buf = ""
                    j = _balanced(s, i + 2)
                    parts.append(("cmdq", s[i + 2:j - 1]))
                    i = j
                else:
                    buf += c
                    i += 1
            if buf:
                parts.append(("dq", buf))
        elif c == "\\":
            flush_raw()
            if i + 1 < len(s) and s[i + 1] != "\n":
                parts.append(("lit", s[i + 1]))
                started = True
            i += 2
        elif c == "$" and s[i + 1:i + 2] == "(":
            flush_raw()
            j = _balanced(s, i + 2)
            parts.append(("cmd", s[i + 2:j - 1]))
            started, i = True, j
        elif c in "&|;<>()":
            op = next(o for o in OPS if s.startswith(o, i))
            fd = None
            if op in (">", ">>", "<") and not parts and cur.isdigit() and len(cur) == 1:
                fd, cur, started = int(cur), "", False
            end_word()
            i += len(op)
            if op in (">", ">>", "<"):
                dup = False
                if s[i:i + 1] == "&":
                    dup, i = True, i + 1
                toks.append(("redir", fd if fd is not None else (0 if op == "<" else 1), op, dup))
            else:
                toks.append(("op", op))
        else:
            cur += c
            started = True
            i += 1
    end_word()
    return toks


@dataclass
class Redir:
    fd: int
    op: str
    dup: bool
    target: list


@dataclass
class Command:
    assigns: list = field(default_factory=list)   # [(name, word)]
    words: list = field(default_factory=list)
    redirs: list = field(default_factory=list)


def parse(s: str) -> list[tuple[list, bool]]:
    """-> [(and_or, background)], and_or = [(connector, [Command, ...pipeline])]."""
    toks = lex(s)
    out: list[tuple[list, bool]] = []
    and_or: list = []
    pipeline: list = []
    cmd = Command()
    connector = None
    i = 0

    def end_cmd():
        nonlocal cmd
        if cmd.words or cmd.assigns or cmd.redirs:
            pipeline.append(cmd)
        cmd = Command()

    def end_pipeline(next_conn):
        nonlocal pipeline, connector
        end_cmd()
        if pipeline:
            and_or.append((connector, pipeline))
        elif next_conn is not None or connector is not None:
            raise ShellSyntaxError("syntax error: unexpected operator")
        pipeline, connector = [], next_conn

    def end_list(bg):
        nonlocal and_or
        end_pipeline(None)
        if and_or:
            out.append((and_or, bg))
        elif bg:
            raise ShellSyntaxError("syntax error: unexpected '&'")
        and_or = []

    while i < len(toks):
        t = toks[i]
        if t[0] == "word":
            w = t[1]
            if not cmd.words and len(w) == 1 and w[0][0] == "raw" and re.match(r"^[A-Za-z_]\w*=", w[0][1]):
                name, val = w[0][1].split("=", 1)
                cmd.assigns.append((name, [("raw", val)] if val else []))
            elif not cmd.words and w and w[0][0] == "raw" and re.match(r"^[A-Za-z_]\w*=", w[0][1]):
                name, val = w[0][1].split("=", 1)
                cmd.assigns.append((name, ([("raw", val)] if val else []) + list(w[1:])))
            else:
                cmd.words.append(w)
        elif t[0] == "redir":
            if i + 1 >= len(toks) or toks[i + 1][0] != "word":
                raise ShellSyntaxError("syntax error: redirection without a target")
            cmd.redirs.append(Redir(t[1], t[2], t[3], toks[i + 1][1]))
            i += 1
        else:
            op = t[1]
            if op == "|":
                end_cmd()
            elif op in ("&&", "||"):
                end_pipeline(op)
            elif op in (";", "&"):
                end_list(op == "&")
            else:
                raise ShellSyntaxError(f"syntax error: '{op}' unexpected")
        i += 1
    if connector is not None and not (cmd.words or pipeline):
        raise ShellSyntaxError("syntax error: unexpected end of file")
    end_list(False)
    return out


# ---- execution ---------------------------------------------------------------------------------
@dataclass
class Ctx:
    phone: "FakePhone"
    uid: int = SHELL
    cwd: str = "/"
    env: dict = field(default_factory=dict)
    umask: int = 0o022
    status: int = 0
    pid: int = 0
    last_bg: int = 0
    args: list = field(default_factory=list)  # $0 $1 ...
    children: list = field(default_factory=list)

    def fork(self) -> "Ctx":
        return Ctx(self.phone, self.uid, self.cwd, dict(self.env), self.umask, self.status, self.pid, self.last_bg,
                   list(self.args))


class IO:
    def __init__(self, stdin: bytes = b""):
        self.stdin = stdin
        self.out = bytearray()
        self.err = bytearray()

    def write(self, s: str | bytes):
        self.out += s.encode() if isinstance(s, str) else s

    def error(self, s: str):
        self.err += (s if s.endswith("\n") else s + "\n").encode()


_VAR = re.compile(r"\$(?:\{([A-Za-z_]\w*|[?$!#0-9])\}|([A-Za-z_]\w*|[?$!#0-9]))")


def _var(ctx: Ctx, name: str) -> str:
    if name == "?":
        return str(ctx.status)
    if name == "$":
        return str(ctx.pid)
    if name == "!":
        return str(ctx.last_bg) if ctx.last_bg else ""
    if name == "#":
        return str(max(0, len(ctx.args) - 1))
    if name.isdigit():
        k = int(name)
        return ctx.args[k] if k < len(ctx.args) else ""
    return ctx.env.get(name, "")


def _expand_vars(ctx: Ctx, text: str) -> str:
    return _VAR.sub(lambda m: _var(ctx, m.group(1) or m.group(2)), text)


def expand_word(ctx: Ctx, word: list, glob: bool = True) -> list[str]:
    text, pattern, has_glob = "", "", False
    for kind, t in word:
        if kind == "lit":
            v = t
            pattern += "".join("[" + ch + "]" if ch in "*?[" else ch for ch in v)
        elif kind in ("cmd", "cmdq"):
            sub = ctx.fork()
            io = IO()
            run_script(sub, t, io)
            ctx.status = sub.status
            v = io.out.decode(errors="replace").rstrip("\n")
            pattern += "".join("[" + ch + "]" if ch in "*?[" else ch for ch in v)
        else:
            v = _expand_vars(ctx, t)
            if kind == "raw" and any(ch in v for ch in "*?["):
                has_glob = True
                pattern += v
            else:
                pattern += "".join("[" + ch + "]" if ch in "*?[" else ch for ch in v)
        text += v
    if glob and has_glob:
        matches = _glob(ctx, pattern)
        if matches:
            return matches
    return [text]


def _glob(ctx: Ctx, pattern: str) -> list[str]:
    absolute = pattern.startswith("/")
    comps = [c for c in pattern.split("/") if c]
    paths = ["/" if absolute else ""]
    fs = ctx.phone.fs
    for comp in comps:
        nxt = []
        for base in paths:
            d = norm(base or ".", ctx.cwd)
            if any(ch in comp for ch in "*?["):
                try:
                    names = fs.listdir(ctx.uid, d)
                except FSError:
                    continue
                nxt += [posixpath.join(base, n) if base else n for n in names
                        if fnmatch.fnmatchcase(n, comp) and not (n.startswith(".") and not comp.startswith("."))]
            else:
                lit = re.sub(r"\[(.)\]", r"\1", comp)
                cand = posixpath.join(base, lit) if base else lit
                if fs.exists(norm(cand, ctx.cwd)):
                    nxt.append(cand)
        paths = nxt
    return sorted(paths)


def run_script(ctx: Ctx, script: str, io: IO) -> int:
    try:
        lists = parse(script)
    except ShellSyntaxError as e:
        io.error(f"{SH}: {e}")
        ctx.status = 2
        return 2
    try:
        for and_or, bg in lists:
            if ctx.phone.killed(ctx.pid):
                break
            if bg:
                ctx.last_bg = ctx.phone.background(ctx, lambda c, ao=and_or: _run_and_or(c, ao, IO()))
                ctx.status = 0
            else:
                _run_and_or(ctx, and_or, io)
    except ExitScript as e:
        ctx.status = e.status
    return ctx.status


def _run_and_or(ctx: Ctx, and_or: list, io: IO) -> int:
    for conn, pipeline in and_or:
        if conn == "&&" and ctx.status != 0:
            continue
        if conn == "||" and ctx.status == 0:
            continue
        data = io.stdin
        for k, cmd in enumerate(pipeline):
            last = k == len(pipeline) - 1
            sub = IO(data)
            _run_command(ctx, cmd, sub)
            io.err += sub.err
            if last:
                io.out += sub.out
            data = bytes(sub.out)
    return ctx.status


def _run_command(ctx: Ctx, cmd: Command, io: IO) -> None:
    argv: list[str] = []
    for w in cmd.words:
        argv += expand_word(ctx, w)
    assigns = {n: "".join(expand_word(ctx, w, glob=False)) if w else "" for n, w in cmd.assigns}
    if not argv:
        ctx.env.update(assigns)
        ctx.status = 0
        return
    # redirections
    inner = IO(io.stdin)
    outputs = []  # (fd, phone path, append)
    err_to_out = out_to_err = False
    fs = ctx.phone.fs
    for r in cmd.redirs:
        target = "".join(expand_word(ctx, r.target, glob=False))
        if r.dup:
            if r.fd == 2 and target == "1":
                err_to_out = True
            elif r.fd == 1 and target == "2":
                out_to_err = True
            continue
        if r.op == "<":
            if target == "/dev/null":
                inner.stdin = b""
                continue
            try:
                inner.stdin = fs.read(ctx.uid, norm(target, ctx.cwd))
            except FSError as e:
                io.error(f"{SH}: {target}: {e.reason}")
                ctx.status = 1
                return
        else:
            outputs.append((r.fd, target, r.op == ">>"))
    for fd, target, append in outputs:  # created (truncated) before the command runs, as a shell does
        if target == "/dev/null":
            continue
        try:
            fs.write(ctx.uid, norm(target, ctx.cwd), b"", append=True, umask=ctx.umask)
            if not append:
                fs.write(ctx.uid, norm(target, ctx.cwd), b"", umask=ctx.umask)
        except FSError as e:
            io.error(f"{SH}: can't create {target}: {e.reason}")
            ctx.status = 1
            return
    env_saved = None
    if assigns:
        env_saved = dict(ctx.env)
        ctx.env.update(assigns)
    try:
        ctx.status = execute(ctx, argv, inner)
    finally:
        if env_saved is not None:
            ctx.env = env_saved
    out, err = bytes(inner.out), bytes(inner.err)
    if err_to_out:
        out, err = out + err, b""
    if out_to_err:
        out, err = b"", err + out
    dest = {1: None, 2: None}
    for fd, target, append in outputs:
        dest[fd] = (target, append)
    for fd, data in ((1, out), (2, err)):
        d = dest.get(fd)
        if d is None:
            (io.out if fd == 1 else io.err).extend(data)
        elif d[0] != "/dev/null" and data:
            fs.write(ctx.uid, norm(d[0], ctx.cwd), data, append=True, umask=ctx.umask)


COMPOUND = {"for", "while", "until", "if", "case", "select", "function", "{", "}", "do", "done", "then", "fi"}


def execute(ctx: Ctx, argv: list[str], io: IO) -> int:
    name = argv[0]
    if name in COMPOUND:
        io.error(f"{SH}: '{name}': compound commands (for, while, if, case) are not supported by the llsim "
                 "stand-in phone's shell")
        return 2
    if "/" not in name and name in BUILTINS:
        try:
            return BUILTINS[name](ctx, argv, io)
        except FSError as e:
            io.error(f"{name}: {e}")
            return 1
    path = _which(ctx, name)
    if path is None:
        io.error(f"{SH}: {name}: inaccessible or not found")
        return 127
    return ctx.phone.exec_file(ctx, path, argv, io)


def _which(ctx: Ctx, name: str) -> str | None:
    fs = ctx.phone.fs
    if "/" in name:
        p = norm(name, ctx.cwd)
        return p if fs.exists(p) else None
    for d in ctx.env.get("PATH", "/system/bin").split(":"):
        p = posixpath.join(d or ".", name)
        if fs.exists(p) and not fs.is_dir(p):
            return p
    if name in BUILTINS:
        return "/system/bin/" + name
    return None


# ---- builtins ----------------------------------------------------------------------------------
def _opts(argv: list[str], flags: str, with_value: str = "") -> tuple[set, dict, list[str]]:
    seen, vals, rest = set(), {}, []
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest += argv[i + 1:]
            break
        if a.startswith("-") and len(a) > 1 and not rest and all(ch in flags + with_value for ch in a[1:]):
            for j, ch in enumerate(a[1:]):
                if ch in with_value:
                    v = a[j + 2:] or (argv[i + 1] if i + 1 < len(argv) else "")
                    if not a[j + 2:]:
                        i += 1
                    vals[ch] = v
                    break
                seen.add(ch)
        else:
            rest.append(a)
        i += 1
    return seen, vals, rest


def b_echo(ctx, argv, io):
    args = argv[1:]
    newline = True
    if args and args[0] == "-n":
        newline, args = False, args[1:]
    io.write(" ".join(args) + ("\n" if newline else ""))
    return 0


def b_printf(ctx, argv, io):
    if len(argv) < 2:
        io.error("printf: Needs 1 argument")
        return 1
    fmt, args = argv[1], list(argv[2:])
    fmt = fmt.replace("\\n", "\n").replace("\\t", "\t")
    out = ""
    while True:
        pieces = re.split(r"(%[sd%])", fmt)
        for p in pieces:
            if p == "%%":
                out += "%"
            elif p in ("%s", "%d"):
                out += args.pop(0) if args else ("" if p == "%s" else "0")
            else:
                out += p
        if not args or not any(p in ("%s", "%d") for p in pieces):
            break
    io.write(out)
    return 0


def b_cat(ctx, argv, io):
    files = argv[1:]
    if not files:
        io.write(io.stdin)
        return 0
    st = 0
    for f in files:
        if f == "-":
            io.write(io.stdin)
            continue
        try:
            io.write(ctx.phone.fs.read(ctx.uid, norm(f, ctx.cwd)))
        except FSError as e:
            io.error(f"cat: {f}: {e.reason}")
            st = 1
    return st


def b_grep(ctx, argv, io):
    flags, vals, rest = _opts(argv, "HhsqvciEFlnwo", "e")
    if "e" in vals:
        pattern = vals["e"]
    elif rest:
        pattern, rest = rest[0], rest[1:]
    else:
        io.error("grep: no pattern")
        return 2
    rx = re.compile(re.escape(pattern) if "F" in flags else pattern, re.I if "i" in flags else 0)
    multi = len(rest) > 1 or "H" in flags
    found = False
    st = 0
    sources = [(None, io.stdin)] if not rest else []
    for f in rest:
        try:
            sources.append((f, ctx.phone.fs.read(ctx.uid, norm(f, ctx.cwd))))
        except FSError as e:
            if "s" not in flags:
                io.error(f"grep: {f}: {e.reason}")
            st = 2
    for f, data in sources:
        n = 0
        for line in data.decode(errors="replace").splitlines():
            hit = bool(rx.search(line)) != ("v" in flags)
            if hit:
                found = True
                n += 1
                if "q" not in flags and "c" not in flags and "l" not in flags:
                    io.write((f"{f}:" if multi and f and "h" not in flags else "") + line + "\n")
        if "c" in flags:
            io.write((f"{f}:" if multi and f else "") + f"{n}\n")
        if "l" in flags and n:
            io.write(f"{f}\n")
    if found:
        return 0
    return st or 1


def _mode_str(st_mode: int) -> str:
    kind = "d" if st_mode & 0o040000 else "-"
    bits = ""
    for shift in (6, 3, 0):
        b = (st_mode >> shift) & 7
        bits += ("r" if b & 4 else "-") + ("w" if b & 2 else "-") + ("x" if b & 1 else "-")
    return kind + bits


def b_ls(ctx, argv, io):
    flags, _, rest = _opts(argv, "laAdR1hn")
    fs = ctx.phone.fs
    st = 0
    for target in rest or ["."]:
        p = norm(target, ctx.cwd)
        try:
            mode, size, mtime, meta = fs.stat(ctx.uid, p)
        except FSError as e:
            io.error(f"ls: {target}: {e.reason}")
            st = 1
            continue
        if fs.is_dir(p) and "d" not in flags:
            try:
                names = fs.listdir(ctx.uid, p)
            except FSError as e:
                io.error(f"ls: {target}: {e.reason}")
                st = 1
                continue
            if "a" not in flags and "A" not in flags:
                names = [n for n in names if not n.startswith(".")]
            entries = [(n, posixpath.join(p, n)) for n in names]
        else:
            entries = [(target, p)]
        for name, full in entries:
            if "l" in flags:
                m, size, mtime, meta = fs.stat(ROOT, full)
                owner = UID_NAMES.get(meta.uid, str(meta.uid))
                io.write(f"{_mode_str(m)} 1 {owner} {owner} {size} "
                         f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(mtime))} {name}\n")
            else:
                io.write(name + "\n")
    return st


def _parse_mode(text: str, current: int) -> int:
    if re.fullmatch(r"[0-7]{1,4}", text):
        return int(text, 8)
    m = re.fullmatch(r"([ugoa]*)([+-=])([rwx]+)", text)
    if not m:
        raise ValueError(text)
    who = m.group(1) or "a"
    bits = sum({"r": 4, "w": 2, "x": 1}[c] for c in m.group(3))
    mask = 0
    for w in who:
        for s in ({"u": [6], "g": [3], "o": [0], "a": [6, 3, 0]}[w]):
            mask |= bits << s
    if m.group(2) == "+":
        return current | mask
    if m.group(2) == "-":
        return current & ~mask
    return mask


def b_chmod(ctx, argv, io):
    flags, _, rest = _opts(argv, "Rf")
    if len(rest) < 2:
        io.error("chmod: Needs 2 arguments")
        return 1
    st = 0
    for f in rest[1:]:
        p = norm(f, ctx.cwd)
        try:
            cur = ctx.phone.fs.stat(ctx.uid, p)[0] & 0o7777
            ctx.phone.fs.chmod(ctx.uid, p, _parse_mode(rest[0], cur))
        except ValueError:
            io.error(f"chmod: bad mode '{rest[0]}'")
            return 1
        except FSError as e:
            io.error(f"chmod: {f}: {e.reason}")
            st = 1
    return st


def b_mkdir(ctx, argv, io):
    flags, vals, rest = _opts(argv, "pv", "m")
    st = 0
    for d in rest:
        try:
            mode = int(vals["m"], 8) if "m" in vals else 0o777
            ctx.phone.fs.mkdir(ctx.uid, norm(d, ctx.cwd), parents="p" in flags, mode=mode,
                               umask=0 if "m" in vals else ctx.umask)
        except FSError as e:
            io.error(f"mkdir: {d}: {e.reason}")
            st = 1
    return st


def b_rm(ctx, argv, io):
    flags, _, rest = _opts(argv, "rRfv")
    st = 0
    for f in rest:
        try:
            ctx.phone.fs.remove(ctx.uid, norm(f, ctx.cwd), recursive=bool(flags & {"r", "R"}))
        except FSError as e:
            if "f" in flags and e.errno == 2:
                continue
            io.error(f"rm: {f}: {e.reason}")
            st = 1
    return st


def b_touch(ctx, argv, io):
    for f in argv[1:]:
        ctx.phone.fs.write(ctx.uid, norm(f, ctx.cwd), b"", append=True, umask=ctx.umask)
    return 0


def b_cp(ctx, argv, io):
    flags, _, rest = _opts(argv, "fpr")
    if len(rest) != 2:
        io.error("cp: Needs 2 arguments")
        return 1
    src, dst = (norm(x, ctx.cwd) for x in rest)
    if ctx.phone.fs.is_dir(dst):
        dst = posixpath.join(dst, posixpath.basename(src))
    data = ctx.phone.fs.read(ctx.uid, src)
    ctx.phone.fs.write(ctx.uid, dst, data, umask=ctx.umask)
    return 0


def b_mv(ctx, argv, io):
    if b_cp(ctx, argv, io):
        return 1
    ctx.phone.fs.remove(ctx.uid, norm(argv[-2], ctx.cwd))
    return 0


def b_sha256sum(ctx, argv, io):
    st = 0
    files = [a for a in argv[1:] if not a.startswith("-")]
    if not files:
        io.write(hashlib.sha256(io.stdin).hexdigest() + "  -\n")
        return 0
    for f in files:
        try:
            h = hashlib.sha256()
            with ctx.phone.fs.open_read(ctx.uid, norm(f, ctx.cwd)) as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            io.write(f"{h.hexdigest()}  {f}\n")
        except FSError as e:
            io.error(f"sha256sum: {f}: {e.reason}")
            st = 1
    return st


def b_test(ctx, argv, io):
    args = argv[1:]
    if argv[0] == "[":
        if not args or args[-1] != "]":
            io.error("[: missing ]")
            return 2
        args = args[:-1]
    neg = False
    if args and args[0] == "!":
        neg, args = True, args[1:]
    fs = ctx.phone.fs

    def one(a):
        if len(a) == 0:
            return False
        if len(a) == 1:
            return a[0] != ""
        if len(a) == 2:
            op, x = a
            p = norm(x, ctx.cwd)
            if op == "-n":
                return x != ""
            if op == "-z":
                return x == ""
            try:
                mode, size, _, _ = fs.stat(ctx.uid, p)
            except FSError:
                return False
            return {"-e": True, "-f": not fs.is_dir(p), "-d": fs.is_dir(p), "-s": size > 0,
                    "-r": fs.access(ctx.uid, p, 4), "-w": fs.access(ctx.uid, p, 2),
                    "-x": fs.access(ctx.uid, p, 1)}.get(op, False)
        x, op, y = a[:3]
        if op in ("=", "=="):
            return x == y
        if op == "!=":
            return x != y
        try:
            xi, yi = int(x), int(y)
        except ValueError:
            return False
        return {"-eq": xi == yi, "-ne": xi != yi, "-lt": xi < yi, "-le": xi <= yi, "-gt": xi > yi,
                "-ge": xi >= yi}.get(op, False)

    r = one(args)
    return 0 if r != neg else 1


def b_true(ctx, argv, io):
    return 0


def b_false(ctx, argv, io):
    return 1


def b_exit(ctx, argv, io):
    raise ExitScript(int(argv[1]) & 0xFF if len(argv) > 1 and argv[1].lstrip("-").isdigit() else ctx.status)


def b_cd(ctx, argv, io):
    target = norm(argv[1] if len(argv) > 1 else ctx.env.get("HOME", "/"), ctx.cwd)
    if not ctx.phone.fs.is_dir(target) or not ctx.phone.fs.access(ctx.uid, target, 1):
        io.error(f"{SH}: cd: {argv[1] if len(argv) > 1 else target}: No such file or directory"
                 if not ctx.phone.fs.is_dir(target) else f"{SH}: cd: {target}: Permission denied")
        return 2
    ctx.cwd = target
    return 0


def b_export(ctx, argv, io):
    for a in argv[1:]:
        if "=" in a:
            k, v = a.split("=", 1)
            ctx.env[k] = v
    return 0


def b_umask(ctx, argv, io):
    if len(argv) == 1:
        io.write(f"{ctx.umask:04o}\n")
    else:
        ctx.umask = int(argv[1], 8)
    return 0


def b_sleep(ctx, argv, io):
    try:
        t = float(argv[1])
    except (IndexError, ValueError):
        io.error("sleep: Needs 1 argument")
        return 1
    end = time.monotonic() + t
    while time.monotonic() < end and not ctx.phone.killed(ctx.pid):
        time.sleep(min(0.05, end - time.monotonic()) if end > time.monotonic() else 0)
    return 0


def b_wait(ctx, argv, io):
    pids = [int(a) for a in argv[1:] if a.isdigit()] or list(ctx.children)
    st = 0
    for pid in pids:
        st = ctx.phone.wait_pid(pid)
    return st


def b_kill(ctx, argv, io):
    sig = 15
    st = 0
    for a in argv[1:]:
        if a.startswith("-"):
            s = a[1:].upper().removeprefix("SIG")
            sig = int(s) if s.isdigit() else {"TERM": 15, "KILL": 9, "INT": 2, "HUP": 1}.get(s, 15)
            continue
        if not a.isdigit():
            io.error(f"kill: Not a number: {a}")
            st = 1
            continue
        err = ctx.phone.kill_pid(ctx.uid, int(a), sig)
        if err:
            io.error(f"kill: {a}: {err}")
            st = 1
    return st


def b_pkill(ctx, argv, io):
    flags, vals, rest = _opts(argv, "f9l", "")
    if not rest:
        io.error("pkill: Needs 1 argument")
        return 1
    rx = re.compile(rest[0])
    hit = False
    for p in list(ctx.phone.procs.values()):
        text = p.cmdline if "f" in flags else p.cmdline.split(" ")[0].rsplit("/", 1)[-1]
        if p.alive() and p.pid != ctx.pid and rx.search(text) and p.uid in (ctx.uid,) + ((p.uid,) if ctx.uid == ROOT else ()):
            ctx.phone.kill_pid(ctx.uid, p.pid, 9 if "9" in flags else 15)
            hit = True
    return 0 if hit else 1


def b_ps(ctx, argv, io):
    io.write("USER           PID  PPID NAME\n")
    for p in sorted(ctx.phone.procs.values(), key=lambda p: p.pid):
        if p.alive():
            io.write(f"{UID_NAMES.get(p.uid, p.uid):<12} {p.pid:>5} {p.ppid:>5} {p.cmdline}\n")
    return 0


def b_id(ctx, argv, io):
    n = UID_NAMES.get(ctx.uid, str(ctx.uid))
    if "-u" in argv:
        io.write(f"{ctx.uid}\n")
    elif "-un" in argv or "-nu" in argv:
        io.write(n + "\n")
    else:
        io.write(f"uid={ctx.uid}({n}) gid={ctx.uid}({n}) groups={ctx.uid}({n}) context=u:r:"
                 f"{'shell' if ctx.uid == SHELL else 'untrusted_app'}:s0\n")
    return 0


def b_whoami(ctx, argv, io):
    io.write(UID_NAMES.get(ctx.uid, str(ctx.uid)) + "\n")
    return 0


def b_which(ctx, argv, io):
    names = [a for a in argv[1:] if not a.startswith("-")]
    if argv[0] == "command":
        names = [a for a in argv[1:] if a != "-v"]
    st = 0
    for n in names:
        p = _which(ctx, n)
        if p:
            io.write(p + "\n")
        else:
            st = 1
    return st


def b_nohup(ctx, argv, io):
    return execute(ctx, argv[1:], io) if len(argv) > 1 else 0


def b_exec(ctx, argv, io):
    if len(argv) == 1:
        return 0
    st = execute(ctx, argv[1:], io)
    raise ExitScript(st)


def b_sh(ctx, argv, io):
    args = argv[1:]
    sub = ctx.fork()
    if args and args[0] == "-c":
        if len(args) < 2:
            io.error(f"{SH}: -c: option requires an argument")
            return 2
        sub.args = [args[2] if len(args) > 2 else "sh"] + args[3:]
        return run_script(sub, args[1], io)
    if not args:
        return run_script(sub, io.stdin.decode(errors="replace"), io)
    path = norm(args[0], ctx.cwd)
    try:
        text = ctx.phone.fs.read(ctx.uid, path).decode(errors="replace")
    except FSError as e:
        io.error(f"{SH}: {args[0]}: {e.reason}")
        return 127 if e.errno == 2 else 126
    sub.args = [args[0]] + args[1:]
    return run_script(sub, text, io)


def b_env(ctx, argv, io):
    args = argv[1:]
    extra = {}
    while args and "=" in args[0]:
        k, v = args.pop(0).split("=", 1)
        extra[k] = v
    if not args:
        for k, v in sorted({**ctx.env, **extra}.items()):
            io.write(f"{k}={v}\n")
        return 0
    saved = dict(ctx.env)
    ctx.env.update(extra)
    try:
        return execute(ctx, args, io)
    finally:
        ctx.env = saved


def b_uname(ctx, argv, io):
    io.write("Linux localhost 5.10.0-android12 #1 SMP PREEMPT aarch64 Toybox\n" if "-a" in argv else
             ("aarch64\n" if "-m" in argv else "Linux\n"))
    return 0


def b_nproc(ctx, argv, io):
    io.write(f"{ctx.phone.ncpu}\n")
    return 0


def b_df(ctx, argv, io):
    flags, _, rest = _opts(argv, "khP")
    io.write("Filesystem      1K-blocks     Used Available Use% Mounted on\n")
    for p in rest or ["/data"]:
        total, used, avail, mount = ctx.phone.df(norm(p, ctx.cwd))
        pct = int(round(100 * used / total)) if total else 0
        io.write(f"/dev/block/dm-8 {total:>10} {used:>8} {avail:>9} {pct:>3}% {mount}\n")
    return 0


def b_getprop(ctx, argv, io):
    props = ctx.phone.props
    if len(argv) == 1:
        for k in sorted(props):
            io.write(f"[{k}]: [{props[k]}]\n")
    else:
        io.write(props.get(argv[1], argv[2] if len(argv) > 2 else "") + "\n")
    return 0


def b_pm(ctx, argv, io):
    phone = ctx.phone
    pkgs = phone.packages()
    if argv[1:3] == ["list", "packages"]:
        flt = [a for a in argv[3:] if not a.startswith("-")]
        for p in sorted(pkgs):
            if not flt or flt[0] in p:
                io.write(f"package:{p}\n")
        return 0
    if argv[1:2] == ["path"] and len(argv) > 2:
        if argv[2] in pkgs:
            io.write(f"package:{pkgs[argv[2]]}\n")
            return 0
        return 1
    if argv[1:2] == ["grant"]:
        io.error(f"Exception occurred while executing 'grant':\njava.lang.SecurityException: Package "
                 f"{argv[2] if len(argv) > 2 else ''} has not requested permission "
                 f"{argv[3] if len(argv) > 3 else ''}")
        return 255
    io.error("pm: unsupported by the llsim stand-in phone: " + " ".join(argv[1:]))
    return 1


def b_am(ctx, argv, io):
    return ctx.phone.am(ctx, argv, io)


def b_run_as(ctx, argv, io):
    phone = ctx.phone
    if len(argv) < 2:
        io.error("usage: run-as <package-name> [--user <uid>] <command> [<args>]")
        return 1
    pkg = argv[1]
    if pkg not in phone.packages():
        io.error(f"run-as: unknown package: {pkg}")
        return 1
    if pkg != TERMUX_PKG or not phone.knobs.termux_debuggable:
        io.error(f"run-as: package not debuggable: {pkg}")
        return 1
    sub = ctx.fork()
    sub.uid, sub.cwd = TERMUX, TERMUX_DATA
    sub.env = {"PATH": "/product/bin:/apex/com.android.runtime/bin:/system/bin:/system/xbin",
               "HOME": TERMUX_DATA, "TMPDIR": "/data/local/tmp"}
    if len(argv) == 2:
        return run_script(sub, io.stdin.decode(errors="replace"), io)
    return execute(sub, argv[2:], io)


def b_ip(ctx, argv, io):
    """``ip [-4] [-o] addr [show [dev] IFACE]`` (iproute2's wording), the phone's interfaces."""
    args = [a for a in argv[1:] if not a.startswith("-")]
    one_line = "-o" in argv or "-oneline" in argv
    if not args or args[0] not in ("a", "addr", "address"):
        io.error("ip: unsupported by the llsim stand-in phone: " + " ".join(argv[1:]))
        return 1
    rest = [a for a in args[1:] if a not in ("show", "list", "dev")]
    found = False
    for k, (name, addr, plen) in enumerate(ctx.phone.interfaces(), 1):
        if rest and rest[0] != name:
            continue
        found = True
        scope = "host" if name == "lo" else "global"
        if one_line:
            io.write(f"{k}: {name}    inet {addr}/{plen} scope {scope} {name}\\       valid_lft forever "
                     "preferred_lft forever\n")
        else:
            io.write(f"{k}: {name}: <{'LOOPBACK' if name == 'lo' else 'BROADCAST,MULTICAST'},UP,LOWER_UP> mtu "
                     f"{65536 if name == 'lo' else 1500} state UP\n    inet {addr}/{plen} scope {scope} {name}\n")
    if rest and not found:
        io.error(f'Device "{rest[0]}" does not exist.')
        return 1
    return 0


def b_dumpsys(ctx, argv, io):
    if argv[1:2] == ["battery"]:
        io.write(ctx.phone.battery_text())
        return 0
    return 0


BUILTINS: dict[str, Callable] = {
    "echo": b_echo, "printf": b_printf, "cat": b_cat, "grep": b_grep, "ls": b_ls, "chmod": b_chmod,
    "mkdir": b_mkdir, "rm": b_rm, "touch": b_touch, "cp": b_cp, "mv": b_mv, "sha256sum": b_sha256sum,
    "test": b_test, "[": b_test, "true": b_true, "false": b_false, "exit": b_exit, "cd": b_cd,
    "export": b_export, "umask": b_umask, "sleep": b_sleep, "wait": b_wait, "kill": b_kill, "pkill": b_pkill,
    "ps": b_ps, "id": b_id, "whoami": b_whoami, "which": b_which, "command": b_which, "nohup": b_nohup,
    "exec": b_exec, "sh": b_sh, "env": b_env, "uname": b_uname, "nproc": b_nproc, "df": b_df,
    "getprop": b_getprop, "pm": b_pm, "am": b_am, "run-as": b_run_as, "dumpsys": b_dumpsys,
    "ip": b_ip,
}


def quote(s: str) -> str:
    return shlex.quote(s)


__all__ = ["Ctx", "IO", "run_script", "execute", "parse", "lex", "BUILTINS", "ShellSyntaxError", "TERMUX_PREFIX",
           "threading"]
