"""The argument parser of every llsim command: a usage error is one line on stderr, exit code 2."""
from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other user error
        print(f"llsim: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)
