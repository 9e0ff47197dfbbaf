"""``python -m pipeline.cli`` runs the CLI (used by tests and the Docker image)."""

from pipeline.cli import main

main()
