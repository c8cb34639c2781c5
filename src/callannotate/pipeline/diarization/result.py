"""Typed input and output of the diarization step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from callannotate.pipeline.types import AudioBuffer, Speaker, Turn

if TYPE_CHECKING:
    from callannotate.pipeline.speakers.embedding import SpeakerEmbedder


@dataclass(frozen=True)
class DiarizationInput:
    """Audio at 16 kHz (``samples`` shaped ``(channels, frames)``) and speaker-count hints.

    ``per_channel``: diarize each channel on its own (one party per channel, the usual
    call-centre stereo); otherwise the channels are mixed to mono first. ``embedder``: the
    CAM++ embedder to use (the pipeline passes the process-wide one it shares with voice
    recognition); ``None`` uses the diarizer's own.
    """

    audio: AudioBuffer
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    per_channel: bool = False
    embedder: SpeakerEmbedder | None = None


@dataclass
class DiarizationResult:
    """Speaker turns (may overlap), the non-overlapping version and the speakers found."""

    turns: list[Turn] = field(default_factory=list)
    exclusive_turns: list[Turn] = field(default_factory=list)
    speakers: list[Speaker] = field(default_factory=list)

    @property
    def num_speakers(self) -> int:
        return len(self.speakers)

    def to_rttm(self, uri: str, exclusive: bool = False) -> str:
        """NIST RTTM lines (``SPEAKER uri 1 start duration <NA> <NA> label <NA> <NA>``)."""
        name = uri.replace(" ", "_") or "audio"
        lines = [
            f"SPEAKER {name} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>"
            for t in (self.exclusive_turns if exclusive else self.turns)
            if t.end > t.start
        ]
        return "".join(line + "\n" for line in lines)
