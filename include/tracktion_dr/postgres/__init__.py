"""PostgreSQL operations: commands, dumps, base backups, the WAL archive."""
