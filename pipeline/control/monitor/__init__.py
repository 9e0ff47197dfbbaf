"""Control-plane monitors of a source and its pipelines: replication-slot risk and WAL rate, publication
health, heartbeat lag read through each pipeline's ``Target``, and Kafka Connect connector states with
automatic restarts of failed tasks (design notes: ``docs/design/monitor.md``)."""
