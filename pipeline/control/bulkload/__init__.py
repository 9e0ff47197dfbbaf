"""Bulk initial load (issue 17): the replication slot is created with an exported snapshot, every
captured table is copied from that snapshot in parallel (``COPY`` source to target when the
transforms compile to SQL, else through the pipeline's transformer and sink), then the Debezium
connector is registered with ``snapshot.mode=no_data`` on that slot, so streaming starts exactly at
the snapshot's consistent point."""
