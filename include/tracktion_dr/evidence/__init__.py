"""What a run leaves behind: the ledger, target locks, reports, the annual review."""
