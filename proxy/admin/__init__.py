"""The admin JSON API (``/admin/*``), a sub-app whose errors are JSON, and
its OpenAPI document (``openapi`` for the paths, ``schemas`` for the bodies)."""
