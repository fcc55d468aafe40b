"""The threaded, chunked patch reader: class-balanced image/DVF patches for training and validation."""
from regnet.reading.reader import PatchReader
from regnet.reading.schedule import Position, Schedule

__all__ = ["PatchReader", "Position", "Schedule"]
