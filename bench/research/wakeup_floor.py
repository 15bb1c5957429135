"""The floor under any Python relay on this machine: CPU per paced message with no HTTP,
no WebSocket, no JSON — one event-loop ``Protocol`` that copies bytes from N upstream
sockets to N downstream sockets as they arrive.

The measurement itself is :mod:`tokenwire.bench.floor` (``tokenwire capacity`` runs it beside
the gateway in the same sitting, pinned like the gateway); this script runs it alone. Compare
the relay's CPU per message with the gateway's µs/token at the same number of streams
(docs/benchmarks-load.md).

    python bench/research/wakeup_floor.py --streams 20 100 250 500 1000 --rate 50 --seconds 10
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _common import SRC

sys.path.insert(0, str(SRC))  # this tree's measurement, whatever PYTHONPATH says
from tokenwire.bench.floor import measure


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, nargs="+", default=[20, 100, 250, 500, 1000])
    p.add_argument("--rate", type=float, default=50.0, help="messages per second per stream")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the relay's event loop")
    args = p.parse_args()
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{stamp}, {os.uname().nodename}, {os.cpu_count()} CPUs, relay on {args.loop}")
    for n in args.streams:
        r = measure(n, args.rate, args.seconds, args.loop)
        print(
            f"{n:>5} streams x {args.rate:g}/s: relay CPU {r.us_per_message or 0:6.1f} us/message "
            f"({r.core_share * 100:5.1f} % of a core; {r.offered_share * 100:.0f} % of the messages due were sent)",
            flush=True,
        )
    sys.exit(0)


if __name__ == "__main__":
    main()
