"""What the event-loop blocking detector lets pass."""

from __future__ import annotations

from blockbuster import BlockBuster


def allow_known_blocking(detector: BlockBuster) -> None:
    """The blocking calls that are fine, each for its reason."""
    # zoneinfo reads each timezone's file once, then serves it from its cache.
    for name in ("os.stat", "io.BufferedReader.read"):
        detector.functions[name].can_block_in("zoneinfo/_tzpath.py", "find_tzfile")
        detector.functions[name].can_block_in(
            "zoneinfo/_common.py", ["load_tzdata", "load_data", "from_file"]
        )
    # asyncpg looks for ~/.pgpass and ~/.postgresql while it opens a connection.
    for function in detector.functions.values():
        function.can_block_in(
            "asyncpg/connect_utils.py",
            ["_read_password_file", "_dot_postgresql_path", "_parse_connect_dsn_and_args"],
        )
