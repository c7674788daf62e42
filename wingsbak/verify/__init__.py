"""Verified backups: every stored backup checked on a schedule and on demand."""
