"""Console tools around a sweep: the cost plan, onset refinement, checkpoint prefetch."""
