"""A stand-in for llsim's HIL worker in the deployment tests (standard library only).

``python hil_standin_worker.py --listen 127.0.0.1:PORT --secret-file F`` (the real worker's command
line): each client gets ``LLSIM-STANDIN <nonce>``, must answer with HMAC-SHA256(secret, nonce) in
hex, gets ``OK <pid>`` (or ``DENIED``), then an echo of each line until ``BYE``. A client that
connects and closes (a readiness check) is fine. Exits after --max-life seconds in any case.
"""
import argparse
import hashlib
import hmac
import os
import secrets
import socket
import sys
import threading
import time


def serve(conn, secret):
    with conn:
        f = conn.makefile("rwb")
        nonce = secrets.token_hex(16)
        try:
            f.write(f"LLSIM-STANDIN {nonce}\n".encode())
            f.flush()
            line = f.readline().strip().decode()
            if not line:
                return
            want = hmac.new(secret, nonce.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(line, want):
                f.write(b"DENIED\n")
                f.flush()
                return
            f.write(f"OK {os.getpid()}\n".encode())
            f.flush()
            for line in f:
                if line.strip() == b"BYE":
                    return
                f.write(line)
                f.flush()
        except OSError:
            return


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--secret-file", required=True)
    ap.add_argument("--max-life", type=float, default=300)
    a = ap.parse_args()
    with open(a.secret_file, "rb") as f:
        secret = f.read().strip()
    host, _, port = a.listen.rpartition(":")
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, int(port)))
    srv.listen(8)
    srv.settimeout(0.5)
    end = time.monotonic() + a.max_life
    while time.monotonic() < end:
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        threading.Thread(target=serve, args=(conn, secret), daemon=True).start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
