"""Async clients: one FLU (machi.client.flu_client) and a whole chain."""
