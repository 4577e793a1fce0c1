"""Pure tests: pricing, extraction, parsers, budget math, views, settings and
the ops files. No server and no database."""
