"""Shared fixtures: real servers on free ports, real tools as oracles."""
