"""A consumer process for the kill-before-commit test: it applies one batch, then hangs before its
transaction commits until the test SIGKILLs it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from sqlalchemy import text

from shared.config import CommonSettings
from shared.db import make_engine
from shared.kafka import ConsumerRunner


async def main() -> None:
    database_url, bootstrap, topic, group, marker = sys.argv[1:6]
    settings = CommonSettings(database_url=database_url, kafka_bootstrap_servers=bootstrap,
                              consumer_session_timeout_ms=6_000)
    engine = make_engine(settings.database_url, "slice")

    async def handler(conn, events):  # type: ignore[no-untyped-def]
        for e in events:
            await conn.execute(text("INSERT INTO ticket_log (event_id, ticket_id) VALUES (:e, :t)"),
                               {"e": e.envelope.event_id, "t": e.payload.ticket_id})
        Path(marker).write_text(str(os.getpid()))
        await asyncio.sleep(3600)  # killed here: the transaction never commits

    runner = ConsumerRunner(settings=settings, engine=engine, group_id=group, topics=[topic], handler=handler)
    await runner.start()
    await asyncio.sleep(3600)


asyncio.run(main())
