"""A service process for the SIGTERM test: the real ServiceContext + create_app under uvicorn, with one
consumer whose handler is slow, so SIGTERM arrives while a batch is in hand."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvicorn
from sqlalchemy import text

from shared.config import ServiceSettings
from shared.embedded import free_port
from shared.logging import configure_logging
from shared.service import ServiceContext, create_app


def main() -> None:
    schema, topic, group, marker = sys.argv[1:5]
    settings = ServiceSettings(port=free_port())  # the rest comes from the environment
    configure_logging("sigterm-test", settings.log_level, settings.log_json)
    ctx = ServiceContext.create("sigterm-test", schema, settings)

    async def slow(conn, events):  # type: ignore[no-untyped-def]
        Path(marker).write_text("in flight")
        await asyncio.sleep(2.0)  # SIGTERM arrives here
        await conn.execute(text(
            "INSERT INTO ticket_log (event_id, ticket_id, consumer) "
            "SELECT unnest(CAST(:e AS text[])), unnest(CAST(:t AS text[])), 'sigterm'"),
            {"e": [d.envelope.event_id for d in events], "t": [d.payload.ticket_id for d in events]})

    ctx.add_consumer(group, [topic], slow)
    app = create_app(ctx, title="sigterm-test", description="test service")
    uvicorn.run(app, host="127.0.0.1", port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=20, lifespan="on")


main()
