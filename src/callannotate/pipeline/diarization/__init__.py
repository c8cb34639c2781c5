"""Speaker diarization: who spoke when (see :mod:`.diarizer`)."""

from callannotate.pipeline.diarization.diarizer import Diarizer
from callannotate.pipeline.diarization.result import DiarizationInput, DiarizationResult

__all__ = ["DiarizationInput", "DiarizationResult", "Diarizer"]
