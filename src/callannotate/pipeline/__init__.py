"""The annotation pipeline: audio in, a typed :class:`~callannotate.pipeline.types.Annotation` out.

``from callannotate.pipeline import annotate`` is the entry point the CLI, the workers and
the benchmarks share. Sub-packages group the steps by what they do: ``audio`` (decode,
preprocess, VAD), ``asr`` (Whisper, streaming), ``diarization``, ``speakers`` (embeddings)
and ``analysis`` (alignment, statistics, sentiment, emotion).
"""

from callannotate.pipeline.run import annotate

__all__ = ["annotate"]
