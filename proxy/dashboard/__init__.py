"""The operator dashboard: server-rendered pages, their templates and static
files, cards, charts, number formatting and login sessions."""
