"""Catalogs: reading and importing them, their snapshots and images, campaign specs."""
