"""`monitor proxy`: a logging pass-through in front of an LLM API.

The forwarding side (server) hands each finished call to a `TrafficSink` as an `Exchange`;
the recording side turns exchanges into stored traffic records without ever delaying the app.
"""
