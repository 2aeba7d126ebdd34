"""Shared test helpers (real processes, ports, health probes). Import as ``from helpers import procs``."""
