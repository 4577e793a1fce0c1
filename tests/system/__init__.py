"""Whole systems: `taximeter serve` as real processes, several workers and
proxies on one budget, private servers killed and restarted, the dashboard in
a real browser, the benchmark's smoke run, and the OpenAPI fuzzer."""
