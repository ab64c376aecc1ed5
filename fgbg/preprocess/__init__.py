"""Preprocessing real videos into training shards (``fgbg-preprocess``; see docs/preprocess.md)."""

from fgbg.preprocess.app import main, preprocess

__all__ = ["main", "preprocess"]
