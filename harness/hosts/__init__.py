"""Hosts: one interface (run, upload, download, daemons) over netns, ssh and vagrant."""
