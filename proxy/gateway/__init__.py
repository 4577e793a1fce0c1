"""The /v1 data path. ``proxying`` is the handler (parse, admit, forward);
``relay`` streams the answer back and ``settling`` records how each call
ended; ``metering`` admits calls through the gate (or its store-held
fallback) and settles them, with ``held``, ``ledger_feedback`` and
``sweeper`` around it. Also the tenant's budget status and the health and
metrics probes (``status``)."""
