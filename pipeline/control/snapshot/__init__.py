"""The snapshot coordinator: Debezium ad hoc snapshots through the source's signal table, a durable
request queue, progress from the notification topic, automatic snapshots of newly captured tables
and lag-aware throttling. Pure modules (``model``, ``signals``, ``notifications``, ``lag``), I/O
modules (``sql``, ``kafka``), the loop and its wiring; see ``docs/design/snapshot.md``."""
