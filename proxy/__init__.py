"""The aiohttp shell, one sub-package per audience: ``gateway`` (the /v1 data
path), ``admin`` (a sub-app at /admin), ``dashboard`` (a sub-app at
/dashboard) and ``cli``; plus the app wiring (``app``: start with its
docstring), settings, errors, metrics, webhooks, logs and the ``operations``
layer admin, dashboard and CLI share. What is pure (usage, prices, budget
math) lives in :mod:`taximeter.pricing`."""
