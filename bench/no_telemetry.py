"""``flywheel proxy`` with per-call telemetry cut out: no span, no metrics, no reading of
the answers for usage. A benchmark baseline only (what the proxy costs without any of
it); not a mode users can run.

    python -m bench.no_telemetry proxy --upstream URL …
"""

from __future__ import annotations

import sys

from flywheel.cli import main
from proxy.telemetry import Telemetry


def _no_telemetry(*_: object) -> None:
    return None  # the gateway then opens no CallTrace, as for non-GenAI endpoints


if __name__ == "__main__":
    Telemetry.begin = _no_telemetry  # type: ignore[method-assign,assignment]
    sys.exit(main())
