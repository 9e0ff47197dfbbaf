"""Checks of a configuration that need no connection (target names, URLs, transforms), run by
`config validate` and before a worker or control replica starts."""
