"""The adb transport protocol, as the device side speaks it (AOSP ``packages/modules/adb``:
``protocol.txt``, ``adb.h``, ``file_sync_protocol.h``, ``shell_protocol.h``).

A message is a 24-byte header of six little-endian u32 (``command, arg0, arg1, data_length,
data_check, magic``) followed by ``data_length`` bytes. ``magic = command ^ 0xffffffff``;
``data_check`` is the plain byte sum of the payload, sent as 0 (and not checked) once both sides
speak version >= ``A_VERSION_SKIP_CHECKSUM``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_WRTE = 0x45545257
A_CLSE = 0x45534C43
A_STLS = 0x534C5453
COMMANDS = {A_CNXN: "CNXN", A_AUTH: "AUTH", A_OPEN: "OPEN", A_OKAY: "OKAY", A_WRTE: "WRTE", A_CLSE: "CLSE",
            A_STLS: "STLS"}

A_VERSION_MIN = 0x01000000
A_VERSION_SKIP_CHECKSUM = 0x01000001
A_VERSION = 0x01000001

MAX_PAYLOAD_V1 = 4096
MAX_PAYLOAD = 1024 * 1024
MAX_HANDSHAKE_PAYLOAD = 4096  # CNXN and AUTH must fit in this whatever the negotiated size

AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3
TOKEN_SIZE = 20

HEADER = struct.Struct("<6I")

# shell protocol v2 packet ids (shell_protocol.h)
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINDOW_SIZE = range(6)
SHELL_V2_HEADER = struct.Struct("<BI")

# sync (file_sync_protocol.h)
SYNC_DATA_MAX = 64 * 1024
SYNC_PATH_MAX = 1024
SYNC_REQUEST = struct.Struct("<4sI")
SYNC_STAT_V1 = struct.Struct("<4sIII")            # id mode size mtime
SYNC_STAT_V2 = struct.Struct("<4sIQQIIIIQqqq")    # id error dev ino mode nlink uid gid size atime mtime ctime
SYNC_DENT = struct.Struct("<4sIIII")              # id mode size mtime namelen


class ProtocolError(Exception):
    """A message that breaks the adb protocol (bad magic, oversized, wrong checksum)."""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


@dataclass
class Message:
    command: int
    arg0: int
    arg1: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return COMMANDS.get(self.command, f"0x{self.command:08x}")

    def pack(self, with_checksum: bool) -> bytes:
        return HEADER.pack(self.command, self.arg0, self.arg1, len(self.data),
                           checksum(self.data) if with_checksum else 0,
                           self.command ^ 0xFFFFFFFF) + self.data


def parse_header(raw: bytes, max_payload: int) -> tuple[int, int, int, int, int]:
    """Validate a header as adbd does; returns (command, arg0, arg1, length, data_check)."""
    command, arg0, arg1, length, check, magic = HEADER.unpack(raw)
    if magic != command ^ 0xFFFFFFFF:
        raise ProtocolError(f"bad magic 0x{magic:08x} for command 0x{command:08x}")
    limit = MAX_HANDSHAKE_PAYLOAD if command in (A_CNXN, A_AUTH) else max_payload
    if length > max(limit, MAX_HANDSHAKE_PAYLOAD if command == A_CNXN else 0):
        raise ProtocolError(f"{COMMANDS.get(command, hex(command))} payload of {length} bytes exceeds {limit}")
    return command, arg0, arg1, length, check


def shell_v2_packet(kind: int, data: bytes) -> bytes:
    return SHELL_V2_HEADER.pack(kind, len(data)) + data
