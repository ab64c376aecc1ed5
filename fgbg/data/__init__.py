"""The data world: sample schema, shard I/O, and pure renderers shared by every app."""
