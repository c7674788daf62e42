"""Backups opened read-only: their folders listed, their files read and restored one by one
(the ``.backups`` folder of the panel's file manager, and ``wingsbak ls``/``cat``)."""
