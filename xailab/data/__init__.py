"""Datasets that ship with the course (generated, never downloaded)."""
from .shapes import CLASSES, SHORTCUT_CLASS, ShapesDataset, shapes

__all__ = ["CLASSES", "SHORTCUT_CLASS", "ShapesDataset", "shapes"]
