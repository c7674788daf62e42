"""What the test folders share: the real stand-ins (panel, Wings, restic's REST server), moto
in server mode and its fault proxy, the daemon's fixtures and helpers, and the factory of the
stores the store suite runs (stores.py)."""
