"""The test harness's real components: a kind cluster with Shoal's image on its nodes,
and a throwaway PostgreSQL that both the host and the pods reach.

setup.py runs the steps in order (engine.py, tools.py, nodeimage.py, images.py,
kind.py), each cached by version under ``$SHOAL_CACHE_DIR`` (``~/.cache/shoal``)
and idempotent; shell.py is what they share; node/ holds the files the offline
node image and the host fixes need; cmd/ the Go mains built offline.
"""
