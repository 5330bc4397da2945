"""Checkers: general linearizability and Machi-specific checkers (pure, budgeted)."""
