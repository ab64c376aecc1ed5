"""Shipped assets: the demo model bundle and example clips (see docs/demo_model.md, docs/app.md)."""
