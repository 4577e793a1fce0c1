"""The benchmark: taximeter against a direct call and a bare forwarder (see README)."""
