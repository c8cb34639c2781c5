"""Telephone and streaming codecs for the quality benchmarks: re-encode a clip with ffmpeg.

Call recorders write G.711, GSM, AMR-NB, Opus and MP3; a benchmark run with ``--codecs``
scores every clip through each of them, so a model that only works on clean PCM shows up.
Each codec is one ffmpeg output (mono; narrowband codecs at 8 kHz). When this ffmpeg lacks
a codec's encoder (Debian's has no ``libopencore_amrnb``), :func:`plan` names the stand-in
it uses instead, or drops the codec, and says so.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Codec:
    """One encoding: ``name`` (short, for tables), ``title`` (what it is), file suffix,
    ffmpeg encoder and its output arguments."""

    name: str
    title: str
    suffix: str
    encoder: str
    args: tuple[str, ...]
    stand_in_for: str | None = None  # the codec this one replaces when that one is missing


CODECS: tuple[Codec, ...] = (
    Codec("g711u", "G.711 mu-law 8 kHz", ".wav", "pcm_mulaw", ("-ar", "8000")),
    Codec("gsm", "GSM 06.10 8 kHz (13 kbit/s)", ".gsm", "libgsm", ("-ar", "8000")),
    Codec(
        "amrnb",
        "AMR-NB 12.2 kbit/s 8 kHz",
        ".amr",
        "libopencore_amrnb",
        ("-ar", "8000", "-b:a", "12.2k"),
    ),
    Codec("opus16", "Opus 16 kbit/s", ".ogg", "libopus", ("-b:a", "16k")),
    Codec("mp3_24", "MP3 24 kbit/s (ffmpeg's default here)", ".mp3", "libmp3lame", ("-b:a", "24k")),
    Codec("mp3_32", "MP3 32 kbit/s", ".mp3", "libmp3lame", ("-b:a", "32k")),
    Codec("mp3_64", "MP3 64 kbit/s", ".mp3", "libmp3lame", ("-b:a", "64k")),
)

# Used when the encoder of the codec named by ``stand_in_for`` is missing: G.723.1 is the
# narrowband CELP-family telephone codec closest to AMR-NB that Debian's ffmpeg can write.
STAND_INS: tuple[Codec, ...] = (
    Codec(
        "g723_1",
        "G.723.1 6.3 kbit/s 8 kHz (stand-in for AMR-NB)",
        ".wav",
        "g723_1",
        ("-ar", "8000", "-b:a", "6300"),
        stand_in_for="amrnb",
    ),
)


def ffmpeg_binary() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise RuntimeError("--codecs needs the ffmpeg command (apt-get install ffmpeg)")
    return path


def available_encoders(ffmpeg: str) -> set[str]:
    """Names of the audio encoders this ffmpeg offers (``ffmpeg -encoders``)."""
    out = subprocess.run(
        [ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout
    return parse_encoders(out)


def parse_encoders(listing: str) -> set[str]:
    """Audio encoder names from ``ffmpeg -encoders`` output (lines like `` A....D name``)."""
    names: set[str] = set()
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0].startswith("A"):
            names.add(parts[1])
    return names


def plan(encoders: set[str]) -> tuple[list[Codec], list[str]]:
    """The codecs to run with these encoders, and a note for each one missing."""
    chosen: list[Codec] = []
    notes: list[str] = []
    for codec in CODECS:
        if codec.encoder in encoders:
            chosen.append(codec)
            continue
        stand_in = next(
            (s for s in STAND_INS if s.stand_in_for == codec.name and s.encoder in encoders),
            None,
        )
        if stand_in is None:
            notes.append(f"{codec.title}: encoder {codec.encoder} missing from ffmpeg, skipped")
        else:
            chosen.append(stand_in)
            notes.append(
                f"{codec.title}: encoder {codec.encoder} missing from ffmpeg; "
                f"using {stand_in.title} instead"
            )
    return chosen, notes


def ffmpeg_command(ffmpeg: str, source: Path, target: Path, codec: Codec) -> list[str]:
    """The ffmpeg command that writes ``source`` as mono ``codec`` audio to ``target``."""
    return [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-i",
        str(source),
        "-ac",
        "1",
        *codec.args,
        "-c:a",
        codec.encoder,
        str(target),
    ]


def encode(ffmpeg: str, source: Path, folder: Path, codec: Codec) -> Path:
    """``source`` re-encoded with ``codec`` into ``folder`` (named after the source)."""
    target = folder / f"{source.stem}.{codec.name}{codec.suffix}"
    subprocess.run(ffmpeg_command(ffmpeg, source, target, codec), check=True)
    return target
