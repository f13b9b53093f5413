"""The HTTP side of `monitor serve` and `monitor run --web`: the dashboard, /metrics and /healthz.

`app` owns the routes and the server; `serving` connects them to the store.
"""
