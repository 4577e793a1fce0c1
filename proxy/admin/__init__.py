"""The admin JSON API (``/admin/*``) and its OpenAPI document."""
