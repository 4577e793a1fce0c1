"""The app in-process, driven over HTTP (the official SDK and raw requests)
in front of the fake upstream, on the embedded and the production backends."""
