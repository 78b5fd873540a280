"""llsim's Termux probe: pushed to the phone and run by Termux's python (standard library only).

It reports what llsim's worker needs (python, numpy, onnxruntime, Termux's properties) as one JSON
line: on stdout with ``--stdout``, or to the first client of ``--listen 127.0.0.1:PORT`` (reached by
the host through ``adb forward``), then exits; it gives up after ``--timeout`` seconds.
"""
import argparse
import json
import os
import platform
import socket
import sys


def facts():
    out = {"python": platform.python_version(), "executable": sys.executable}
    for mod in ("numpy", "onnxruntime"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "unknown")
        except Exception as e:  # ImportError, or a broken build that fails on import
            out[mod] = None
            out[mod + "_error"] = f"{type(e).__name__}: {e}"
    props = {}
    home = os.environ.get("HOME", "")
    for rel in (".termux/termux.properties", ".config/termux/termux.properties"):
        path = os.path.join(home, rel)
        try:
            with open(path) as f:
                for line in f:
                    line = line.strip()
                    if line and not line.startswith("#") and ("=" in line or ":" in line):
                        k, _, v = line.replace(":", "=", 1).partition("=") if "=" not in line else line.partition("=")
                        props[k.strip()] = v.strip()
            out["properties_file"] = path
        except OSError:
            continue
    out["properties"] = props
    try:
        st = os.statvfs(home or "/")
        out["home_free_bytes"] = st.f_bavail * st.f_frsize
    except OSError:
        pass
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen")
    ap.add_argument("--stdout", action="store_true")
    ap.add_argument("--timeout", type=float, default=20.0)
    a = ap.parse_args()
    line = (json.dumps(facts()) + "\n").encode()
    if a.stdout or not a.listen:
        sys.stdout.write(line.decode())
        return 0
    host, _, port = a.listen.rpartition(":")
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(4)
    srv.settimeout(a.timeout)
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        return 1
    with conn:
        conn.sendall(line)
    srv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
