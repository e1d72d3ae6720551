"""The proxy as shipped, served by granian instead of uvicorn: the server layer's comparison (bench/RESULTS.md).

    MOOLTIPROXY_BENCH_CONFIG=FILE python -m granian --interface asgi --factory bench.granian_app:app ...

The same app, upstream client, garbage collection and access log as ``mooltiproxy serve``. What uvicorn's
protocol gives the proxy and granian does not (mooltiproxy/http/protocol.py): deadlines for headers and body,
the cap on connections per address, and the cancellation of a request whose client left, for which the pipeline
then runs a task per request that watches for the disconnect.
"""

from __future__ import annotations

import os
from typing import Any

from mooltiproxy import load
from mooltiproxy.app import create_app
from mooltiproxy.ops.collector import tune_collector
from mooltiproxy.ops.logs import setup_logging

CONFIG_ENV = "MOOLTIPROXY_BENCH_CONFIG"
LOG_LEVEL_ENV = "MOOLTIPROXY_BENCH_LOG_LEVEL"


def app() -> Any:
    """Called by granian in its worker process."""
    setup_logging(os.environ.get(LOG_LEVEL_ENV, "info"))
    built = create_app(load(os.environ[CONFIG_ENV]))
    tune_collector()
    return built
