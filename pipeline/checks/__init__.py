"""Checks of a configuration that need no connection (target names, URLs, transforms).

Run by `config validate` and before a worker or control replica starts."""
