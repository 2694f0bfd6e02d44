"""Prefect flows, task policy and the `stylematrix` command line."""
