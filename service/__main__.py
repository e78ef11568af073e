"""``python -m service`` / ``textclf serve``: run the gRPC service until SIGTERM or SIGINT."""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from service.runtime import RuntimeConfigError
from service.server import create_app
from service.settings import Settings, SettingsError, load_settings

logger = logging.getLogger("service")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def serve(settings: Settings) -> None:
    app = await create_app(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await app.start()
    metrics = f"http://{settings.metrics_host}:{app.metrics_port}/metrics" if app.metrics_port is not None else "off"
    logger.info("textclf serving gRPC on %s:%d; metrics %s", settings.host, app.port, metrics)
    await stop.wait()
    logger.info("shutting down: draining for up to %.1f s", settings.grace_period)
    await app.stop(settings.grace_period)
    # every call the servicers saw, by final status: what a drain did can be audited from the log
    logger.info("final request counts: %s", json.dumps(app.metrics.request_counts(), sort_keys=True))
    logger.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"textclf serve: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except (RuntimeConfigError, SettingsError) as exc:  # e.g. bad TLS files, unreadable token file
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
