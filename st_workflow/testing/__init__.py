"""Local servers that speak the real protocols (CMR/PDS replay, OpenAI-compatible chat completions).

They exist so that the real HTTP code paths can be exercised offline, by the tests, the benchmarks and the demo.
"""
