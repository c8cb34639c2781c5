"""Voiceprint records (as stored) and their API views (without the embeddings)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from callannotate.contacts.schemas import ContactCreate

SCHEMA_VERSION = 1
#: Owner of voices stored before voices had owners: the local user (admins see them too).
LEGACY_OWNER = "local"
#: Longest voice name (characters), in the API and the CLI alike.
MAX_VOICE_NAME = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleInfo(_Model):
    """One enrollment sample as the API shows it."""

    id: str
    source: str = Field(description="File name, or 'job:<id>/<label>' for job enrollment.")
    duration: float = Field(ge=0, description="Length of the audio, seconds.")
    speech_duration: float = Field(ge=0, description="Speech found in it, seconds.")
    snr_db: float | None = Field(None, description="Estimated speech-to-noise ratio, dB.")
    created_at: datetime = Field(default_factory=utcnow)


class VoiceSample(SampleInfo):
    """A stored sample: its info plus its L2-normalised embeddings.

    ``embedding`` is the 192-d CAM++ one; ``ge2e_embedding`` the 256-d GE2E one (absent in
    samples enrolled while GE2E was disabled: such a store is scored with CAM++ alone).
    ``views`` and ``ge2e_views`` are the embeddings of sub-windows of the sample, used only
    to estimate how a voice varies (WCCN, see :mod:`callannotate.voices.scoring`); samples
    stored before views existed have none and still work.
    """

    embedding: list[float]
    ge2e_embedding: list[float] | None = None
    views: list[list[float]] = Field(default_factory=list)
    ge2e_views: list[list[float]] = Field(default_factory=list)


class VoiceInfo(_Model):
    """A voice as the API shows it."""

    id: str
    name: str
    owner: str = Field(description="Id of the user the voice belongs to.")
    contact_id: str | None = None
    created_at: datetime
    updated_at: datetime
    samples: list[SampleInfo]
    speech_duration: float = Field(description="Total enrolled speech, seconds.")


class Voice(_Model):
    """One enrolled person, stored as ``<voices_dir>/<id>.json``."""

    schema_version: int = SCHEMA_VERSION
    id: str
    name: str = Field(min_length=1, max_length=MAX_VOICE_NAME)
    owner: str = Field(
        LEGACY_OWNER, description="User id the voice belongs to (older files: the local user)."
    )
    contact_id: str | None = Field(None, max_length=200)
    embedding_model: str = Field(description="Model the embeddings come from.")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    samples: list[VoiceSample] = Field(default_factory=list)

    def info(self) -> VoiceInfo:
        return VoiceInfo(
            id=self.id,
            name=self.name,
            owner=self.owner,
            contact_id=self.contact_id,
            created_at=self.created_at,
            updated_at=self.updated_at,
            samples=[
                SampleInfo(
                    **s.model_dump(exclude={"embedding", "ge2e_embedding", "views", "ge2e_views"})
                )
                for s in self.samples
            ],
            speech_duration=round(sum(s.speech_duration for s in self.samples), 3),
        )


class NewContact(ContactCreate):
    """A contact created together with a voice (``fn`` defaults to the voice's name)."""

    fn: str = Field("", max_length=500, description="Formatted name; default: the voice's name.")


class JobEnrollRequest(_Model):
    """Body of ``POST /jobs/{id}/speakers/{label}/enroll``: a new voice or an existing one."""

    name: str | None = Field(None, min_length=1, max_length=200)
    voice_id: str | None = Field(None, description="Add the sample to this voice instead.")
    contact_id: str | None = Field(
        None,
        max_length=200,
        description="Link the voice to this contact of yours (422 when it is not yours). "
        "With voice_id: (re)links that voice.",
    )
    contact: NewContact | None = Field(
        None,
        description="Create this contact and link the voice to it (not with contact_id); "
        "fn defaults to the voice's name. Needs a connected address book.",
    )


class VoicePatch(_Model):
    """Body of ``PATCH /voices/{id}``: rename, link to a contact or unlink (``null``)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    contact_id: str | None = Field(
        None, max_length=200, description="A contact of yours; null removes the link."
    )


class Candidate(_Model):
    voice_id: str
    name: str
    score: float


class IdentifyResult(_Model):
    """Best matches for one piece of audio (CLI ``voices identify``)."""

    accepted: bool
    threshold: float
    candidates: list[Candidate]
