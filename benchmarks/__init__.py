"""asv benchmarks of cbn (see asv.conf.json at the repository root)."""
