"""The benchmarks and evaluations behind docs/results: speed, GPU, planner accuracy, continuation and Tables 1 and 2,
the retrieval and continuation evaluations with their metrics, peak-memory counting and the plain-numpy plots.
Nothing else in pfp_core depends on this room; the CLI runs it (`bench`, `eval`, `eval-continuation`).
"""
