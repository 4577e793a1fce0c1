"""The operator dashboard, a sub-app at /dashboard whose errors are pages:
``site`` (the sub-app and its routes), ``login``, ``clients``, ``usage``;
their templates and static files, cards, charts, number formatting and login
sessions."""
