"""The lab: run servers natively, measure them (sweep), and report (demo, the benchmark suite)."""
