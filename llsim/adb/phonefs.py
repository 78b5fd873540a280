"""The stand-in phone's file system: a sandbox directory on this host mapped to the phone's paths,
with Android's owners and permission bits emulated (the shell uid cannot read Termux's private
files; a Termux program cannot read a 0600 file that the shell uid pushed).

Phone path ``/data/local/tmp/llsim/w.py`` lives at ``SANDBOX/root/data/local/tmp/llsim/w.py``.
Owners and modes are kept beside the files (in memory). A regular file's host group/other bits
follow its emulated mode (owner bits: at least read and write), so a program started on the stand-in
that checks its own file's mode (the worker refuses a secret file others may read) sees the phone's.
"""
from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

ROOT, SHELL, TERMUX = 0, 2000, 10234
UID_NAMES = {ROOT: "root", SHELL: "shell", TERMUX: "u0_a234"}

TERMUX_PKG = "com.termux"
TERMUX_DATA = "/data/data/com.termux"
TERMUX_FILES = TERMUX_DATA + "/files"
TERMUX_PREFIX = TERMUX_FILES + "/usr"
TERMUX_HOME = TERMUX_FILES + "/home"
TERMUX_PYTHON = TERMUX_PREFIX + "/bin/python"
TERMUX_SH = TERMUX_PREFIX + "/bin/sh"
TERMUX_PROPERTIES = TERMUX_HOME + "/.termux/termux.properties"


class FSError(Exception):
    """An errno-style failure, worded as toybox words it ("Permission denied", ...)."""

    def __init__(self, err: int, path: str):
        self.errno = err
        self.path = path
        super().__init__(f"{path}: {os.strerror(err)}")

    @property
    def reason(self) -> str:
        """The failure alone, as toybox prints it after ``cmd: path:`` ("Permission denied")."""
        return os.strerror(self.errno)


@dataclass
class Meta:
    uid: int
    mode: int  # permission bits only (0o7777)


def norm(path: str, cwd: str = "/") -> str:
    p = posixpath.normpath(posixpath.join(cwd, path))
    return "/" + p.lstrip("/")


class PhoneFS:
    def __init__(self, sandbox: Path):
        self.sandbox = Path(sandbox)
        self.root = self.sandbox / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta: dict[str, Meta] = {"/": Meta(ROOT, 0o755)}
        self.lock = threading.RLock()

    # ---- mapping -------------------------------------------------------------------------------
    def host(self, path: str) -> Path:
        return self.root / norm(path).lstrip("/")

    def phone(self, host_path: str | Path) -> str | None:
        try:
            rel = Path(host_path).resolve().relative_to(self.root.resolve())
        except ValueError:
            return None
        return "/" + rel.as_posix() if str(rel) != "." else "/"

    def _meta(self, path: str) -> Meta:
        m = self.meta.get(path)
        if m is None:
            parent = posixpath.dirname(path)
            pm = self._meta(parent) if path != "/" else Meta(ROOT, 0o755)
            is_dir = self.host(path).is_dir()
            m = Meta(pm.uid, (pm.mode & 0o777) if is_dir else (pm.mode & 0o666))
        return m

    def _mirror(self, path: str) -> None:
        """The host file's group/other bits follow the emulated mode (see the module docstring)."""
        h = self.host(path)
        if h.is_file():
            m = self._meta(path).mode
            try:
                os.chmod(h, 0o600 | (m & 0o177))
            except OSError:
                pass

    # ---- permission checks (owner bits for the owner, "other" bits for everyone else) ----------
    @staticmethod
    def _allowed(meta: Meta, uid: int, want: int) -> bool:
        if uid == ROOT:
            return True
        bits = (meta.mode >> 6) & 7 if meta.uid == uid else meta.mode & 7
        return bits & want == want

    def _check_path(self, uid: int, path: str, want: int, must_exist: bool = True) -> Path:
        path = norm(path)
        parts = path.strip("/").split("/") if path != "/" else []
        cur = "/"
        for part in parts[:-1]:
            cur = posixpath.join(cur, part)
            h = self.host(cur)
            if not h.exists():
                raise FSError(errno.ENOENT, path)
            if not h.is_dir():
                raise FSError(errno.ENOTDIR, path)
            if not self._allowed(self._meta(cur), uid, 1):
                raise FSError(errno.EACCES, path)
        h = self.host(path)
        if must_exist and not h.exists():
            raise FSError(errno.ENOENT, path)
        if h.exists() and want and not self._allowed(self._meta(path), uid, want):
            raise FSError(errno.EACCES, path)
        return h

    def access(self, uid: int, path: str, want: int) -> bool:
        try:
            self._check_path(uid, path, want)
            return True
        except FSError:
            return False

    # ---- operations ----------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.host(path).exists()

    def is_dir(self, path: str) -> bool:
        return self.host(path).is_dir()

    def read(self, uid: int, path: str) -> bytes:
        with self.lock:
            h = self._check_path(uid, path, 4)
            if h.is_dir():
                raise FSError(errno.EISDIR, norm(path))
            return h.read_bytes()

    def open_read(self, uid: int, path: str):
        with self.lock:
            h = self._check_path(uid, path, 4)
            if h.is_dir():
                raise FSError(errno.EISDIR, norm(path))
            return h.open("rb")

    def _check_create(self, uid: int, path: str) -> Path:
        path = norm(path)
        parent = posixpath.dirname(path)
        hp = self._check_path(uid, parent, 0)
        if not hp.is_dir():
            raise FSError(errno.ENOTDIR, path)
        h = self.host(path)
        if h.exists():
            if h.is_dir():
                raise FSError(errno.EISDIR, path)
            if not self._allowed(self._meta(path), uid, 2):
                raise FSError(errno.EACCES, path)
        elif not self._allowed(self._meta(parent), uid, 3):
            raise FSError(errno.EACCES, path)
        return h

    def write(self, uid: int, path: str, data: bytes, append: bool = False, mode: int = 0o666,
              umask: int = 0o022) -> None:
        with self.lock:
            h = self._check_create(uid, path)
            new = not h.exists()
            with h.open("ab" if append else "wb") as f:
                f.write(data)
            if new:
                self.meta[norm(path)] = Meta(uid, mode & ~umask & 0o7777)
                self._mirror(norm(path))

    def open_write(self, uid: int, path: str, mode: int, umask: int = 0):
        """For sync SEND: creates parent directories (the fixed_push_mkdir feature) and the file."""
        with self.lock:
            path = norm(path)
            self.mkdir(uid, posixpath.dirname(path), parents=True, mode=0o771, umask=0)
            h = self._check_create(uid, path)
            f = h.open("wb")
            self.meta[path] = Meta(uid, mode & ~umask & 0o7777)
            self._mirror(path)
            return f

    def mkdir(self, uid: int, path: str, parents: bool = False, mode: int = 0o777, umask: int = 0o022,
              owner: int | None = None) -> None:
        with self.lock:
            path = norm(path)
            if path == "/" or self.host(path).is_dir():
                if parents:
                    return
                raise FSError(errno.EEXIST, path)
            parent = posixpath.dirname(path)
            if not self.host(parent).exists():
                if not parents:
                    raise FSError(errno.ENOENT, path)
                self.mkdir(uid, parent, parents=True, mode=mode, umask=umask, owner=owner)
            self._check_create(uid, path)
            self.host(path).mkdir()
            self.meta[path] = Meta(uid if owner is None else owner, mode & ~umask & 0o7777)

    def listdir(self, uid: int, path: str) -> list[str]:
        with self.lock:
            h = self._check_path(uid, path, 4)
            if not h.is_dir():
                raise FSError(errno.ENOTDIR, norm(path))
            return sorted(os.listdir(h))

    def stat(self, uid: int, path: str) -> tuple[int, int, int, Meta]:
        """(st_mode incl. type, size, mtime, meta); needs search permission on the parents only."""
        with self.lock:
            path = norm(path)
            h = self._check_path(uid, path, 0)
            st = h.stat()
            m = self._meta(path)
            kind = stat.S_IFDIR if h.is_dir() else stat.S_IFREG
            return kind | m.mode, st.st_size, int(st.st_mtime), m

    def remove(self, uid: int, path: str, recursive: bool = False) -> None:
        with self.lock:
            path = norm(path)
            h = self._check_path(uid, path, 0)
            parent = posixpath.dirname(path)
            if not self._allowed(self._meta(parent), uid, 3):
                raise FSError(errno.EACCES, path)
            if h.is_dir():
                if not recursive:
                    raise FSError(errno.EISDIR, path)
                shutil.rmtree(h)
                for k in [k for k in self.meta if k == path or k.startswith(path + "/")]:
                    del self.meta[k]
            else:
                h.unlink()
                self.meta.pop(path, None)

    def chmod(self, uid: int, path: str, mode: int) -> None:
        with self.lock:
            path = norm(path)
            self._check_path(uid, path, 0)
            m = self._meta(path)
            if uid not in (ROOT, m.uid):
                raise FSError(errno.EPERM, path)
            self.meta[path] = Meta(m.uid, mode & 0o7777)
            self._mirror(path)

    def set_mtime(self, path: str, mtime: int) -> None:
        try:
            os.utime(self.host(path), (mtime, mtime))
        except OSError:
            pass

    # ---- set-up (as root) ----------------------------------------------------------------------
    def put(self, path: str, data: bytes | str, uid: int = ROOT, mode: int = 0o444) -> None:
        path = norm(path)
        self.mkdir(ROOT, posixpath.dirname(path), parents=True, mode=0o755, umask=0)
        h = self.host(path)
        h.write_bytes(data.encode() if isinstance(data, str) else data)
        self.meta[path] = Meta(uid, mode)
        self._mirror(path)

    def put_dir(self, path: str, uid: int, mode: int) -> None:
        path = norm(path)
        self.mkdir(ROOT, path, parents=True, mode=0o755, umask=0)
        self.meta[path] = Meta(uid, mode)

    def used_bytes(self, under: str) -> int:
        h = self.host(under)
        return sum(p.stat().st_size for p in h.rglob("*") if p.is_file()) if h.exists() else 0
