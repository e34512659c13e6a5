from shared.kafka.consumer import BatchHandler, ConsumerRunner, Delivered, PermanentError
from shared.kafka.producer import EventProducer, envelope_headers

__all__ = ["BatchHandler", "ConsumerRunner", "Delivered", "EventProducer", "PermanentError",
           "envelope_headers"]
