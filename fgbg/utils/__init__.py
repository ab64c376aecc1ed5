"""The floor every other fgbg package may use: safe weight loading, config helpers, the config folder.

Nothing here imports another fgbg package (``tests/test_layers.py``).
"""
