"""Coverage-guided fuzzing of the sans-IO protocol layer with atheris (libFuzzer).

    .venv/bin/pip install -e '.[fuzz]'
    .venv/bin/python tests/fuzz/fuzz_protocol.py -runs=200000          # or -max_total_time=600

Each input is split into a few byte chunks fed, in turn, to the startup parser, the server's startup
reply, and both directions of an established session's tracker. Any exception but ProtocolError is a
crash (libFuzzer stops and writes the input to crash-*). The hypothesis tests in tests/test_wire.py
cover the same ground in the default test run; this finds deeper paths given time.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from proxy.events import ConnectionInfo
    from proxy.protocol import wire
    from proxy.protocol.hashing import ValueHasher
    from proxy.protocol.startup import ServerStartup, parse_startup
    from proxy.protocol.tracker import SessionTracker

HASHER = ValueHasher(b"f" * 32)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = fdp.ConsumeIntInRange(0, 2)
    try:
        if target == 0:
            parse_startup(fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif target == 1:
            startup = ServerStartup()
            while fdp.remaining_bytes():
                startup.feed(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64)))
        else:
            tracker = SessionTracker(ConnectionInfo(1, "f"), HASHER, result_rows=fdp.ConsumeIntInRange(0, 4),
                                     max_message=1 << 16)
            now = 0.0
            while fdp.remaining_bytes():
                now += 0.001
                chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 96))
                if fdp.ConsumeBool():
                    tracker.client_data(chunk, now)
                else:
                    tracker.server_data(chunk, now)
    except wire.ProtocolError:
        pass


def main(argv: list[str]) -> None:
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
