"""The Jepsen-style harness: hosts, deploy, nemesis, workloads, histories, checkers, reports.

Depends on nothing in ``machi`` except through the deployed CLI and the chain client.
"""
