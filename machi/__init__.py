"""Machi-py: a write-once blob store on Chain Replication and Humming Consensus."""

__version__ = "0.1.0"
