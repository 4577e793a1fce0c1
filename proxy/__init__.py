"""The aiohttp application: routing, auth, forwarding, metering, admin API,
status API, CLI and settings. Usage extraction and estimates are pure and live
in :mod:`taximeter.pricing`."""
