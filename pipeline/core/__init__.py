"""The core every other package may import: events and positions, errors, settings, logs, retry, metrics.

It imports nothing of the project above it (``make lint`` checks the layers)."""
