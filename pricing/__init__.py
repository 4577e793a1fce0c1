"""The pure core: price catalog, model-name resolution, cost computation and
currency (catalog, money, usage), usage extraction and the SSE parser it reads
streams with (extract, sse), pre-call estimates (estimate), budget and limit
math (budgets) and the domain types the stores and gates take and return
(models).

Pure: nothing here opens a socket, reads the environment or looks at the clock;
the only I/O is loading catalog files.
"""
