"""The control plane (``cdc-pipeline control``): monitors, snapshots, verification, cutover; one active replica."""
