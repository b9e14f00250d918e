"""trimtab's benchmark suite: tasks x methods x LRs; run ``python -m benchmarks.run``."""
