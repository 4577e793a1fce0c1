"""The aiohttp application: routing, auth, forwarding, usage extraction, admin
API, status API, CLI and settings."""
