"""The /v1 data path: virtual-key auth, admission, forwarding, relay and
metering, plus the tenant's budget status and the health and metrics probes."""
