"""Shared pieces of the mailfleet services: settings, bus contract, database, crypto."""
