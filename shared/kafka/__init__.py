from shared.kafka.consumer import (
    BatchHandler,
    ConsumerRunner,
    DeadLetter,
    Delivered,
    PermanentError,
    write_dead_letters,
)
from shared.kafka.producer import EventProducer, envelope_headers

__all__ = ["BatchHandler", "ConsumerRunner", "DeadLetter", "Delivered", "EventProducer", "PermanentError",
           "envelope_headers", "write_dead_letters"]
