"""Low-level pieces every package shares: atomic file writes, device names, the user-input error, paths.

Nothing here imports another package of this repository, so any module may use it.
"""
