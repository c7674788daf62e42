"""wingsbak: the backup half of a Pterodactyl/Pelican node daemon."""

__version__ = "0.1.0"
