"""The data plane: consume, decode, transform, reduce, apply with offsets, commit (``cdc-pipeline run``)."""
