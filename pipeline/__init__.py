"""cdc-pipeline: apply Debezium change events from Kafka to target databases, idempotently."""

__version__ = "0.1.0"
