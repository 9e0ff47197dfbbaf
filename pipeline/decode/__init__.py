"""Decoding Debezium messages (JSON with schemas, Avro through a schema registry) into typed events."""
