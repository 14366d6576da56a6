"""File-level recovery: configuration and storage snapshots, restore beside, integrity."""
