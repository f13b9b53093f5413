"""Replay: re-send stored requests and compare the answers with the stored ones.

`send` replays one probe, `batch` replays many under a stored run, `diff` renders what changed and
`recorded` serves stored answers over HTTP so a client can be tested against real history. The
SQL behind all of them lives in `monitor.store.replays`.
"""
