"""The admin listener: health, readiness, metrics, the status page and reload."""
