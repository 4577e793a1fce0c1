"""One case set run against every backend of a role: the stores (SQLite,
Postgres), the gates (in-process, Redis), and what is built on them."""
