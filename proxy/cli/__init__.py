"""The ``taximeter`` command: its sub-commands, ``apply`` of ops files and ``serve``."""
