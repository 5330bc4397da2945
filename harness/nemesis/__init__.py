"""The nemesis: network partitions (iptables on the receiving host), process faults, and
seeded fault schedules.  Pure parts (grudges, schedules) are separate from the SSH parts."""
