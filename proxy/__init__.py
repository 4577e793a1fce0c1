"""The aiohttp application, one sub-package per audience (gateway, admin,
dashboard, cli) plus the app wiring, settings, errors, metrics, webhooks, logs
and the operations layer they share. Usage extraction and estimates are pure
and live in :mod:`taximeter.pricing`."""
