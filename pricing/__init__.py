"""The pure core, one module per question:

- :mod:`.catalog`: which rates a model name resolves to and what a usage
  costs at them; loads ``prices.toml`` and the operator's files.
- :mod:`.extract`, :mod:`.stream_usage` and :mod:`.sse`: the usage an upstream reports, from JSON
  bodies and SSE streams (``StreamUsage`` follows a stream message by message).
- :mod:`.estimate`: what a call may cost before it runs (its reservation).
- :mod:`.charge`: usage + price + status → the ledger event, one step.
- :mod:`.budgets`: budget math: periods and rollover, admission, pauses,
  levels, alerts and the webhook body of each.
- :mod:`.money`, :mod:`.usage`, :mod:`.models`: Decimal money and its one
  text rule, the usage of a call, and the domain types stores and gates take
  and return.

Pure: nothing here opens a socket, reads the environment or looks at the clock;
the only I/O is loading catalog files.
"""
