"""Benchmarks and the demo workload: ``machi bench flu`` and ``machi demo``.

Owns: the raw-disk baseline (``raw_disk``), latency statistics (``stats``), the FLU
append/read benchmark (``flu``), the chain benchmark (``chain``), how their daemons are
started (``daemon``) and the loopback demo workload (``demo``).  Must not:
hold protocol or storage logic (it drives real daemons through ``FluClient`` only), nor
assert on timings (it prints numbers).
"""
