"""Backups: the catalog (list, verify, pick) over the plan's backup locations."""
