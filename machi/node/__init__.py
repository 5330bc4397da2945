"""The anyio FLU daemon: listener, connections, wedge state, chain-manager driver."""
