"""Results are files: each run writes a directory (manifest, metrics, tables, Perfetto timeline)."""
