"""Kafka Connect REST client, Debezium connector definitions and source-database preparation."""
