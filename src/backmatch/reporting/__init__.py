"""Loading results, summarising them over seeds, and drawing figures, for the notebooks.

Nothing here imports torch, so the notebooks start quickly.
"""
