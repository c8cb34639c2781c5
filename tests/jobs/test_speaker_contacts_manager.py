"""The embedded queue manager puts contacts on a finished job's speakers (real worker process,
fake runner returning an annotation, real contacts cache on SQLite; no CardDAV server: the
contacts are written to the cache with ``push=False``)."""

from __future__ import annotations

from fake_runners import AnnotationRunner
from manager_testing import Harness, make_settings

from callannotate.config import Settings
from callannotate.contacts.schemas import ContactFields, Phone
from callannotate.contacts.service import ContactsService
from callannotate.db.contact_models import ContactAccount, ContactBook
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.jobs.models import AudioMeta, Job, JobState
from callannotate.pipeline.types import Annotation


def _contacts(settings: Settings) -> tuple[str, str]:
    db = Database.from_settings(settings)
    upgrade_database(db)
    with db.session() as session:
        session.add(
            ContactAccount(
                id="c" * 32, owner="local", url="http://127.0.0.1:9/", username="u",
                password_sealed=b"-",
            )
        )  # fmt: skip
        session.add(ContactBook(id="b" * 32, account_id="c" * 32, owner="local", url="/book/"))
    service = ContactsService(settings, db)
    maria = service.create(
        "local",
        ContactFields(fn="Мария Сидорова", org="Acme", phones=[Phone(value="8 495 123-45-67")]),
        push=False,
    )
    ivan = service.create(
        "local", ContactFields(fn="Ivan Petrov", phones=[Phone(value="+79161234567")]), push=False
    )
    db.dispose()
    return maria.id, ivan.id


def _submit(h: Harness, caller: str) -> Job:
    job_id = h.queue.new_job_id()
    staged = h.queue.staging_dir() / f"upload-{job_id}"
    staged.write_bytes(b"not decoded by the queue")
    meta = AudioMeta(
        filename="call.wav",
        stored_as="audio.wav",
        size_bytes=staged.stat().st_size,
        format="wav",
        codec="pcm_s16le",
        sample_rate=16000,
        channels=1,
        duration=1.0,
    )
    return h.queue.submit(Job(id=job_id, owner="local", audio=meta, caller=caller), staged)


async def test_manager_resolves_contacts_before_storing_the_result(tmp_path) -> None:
    settings = make_settings(tmp_path)
    maria, ivan = _contacts(settings)
    h = Harness(settings, AnnotationRunner(maria))
    await h.manager.start()
    try:
        await h.wait_ready()
        job = _submit(h, caller="+79161234567")
        h.manager.wake()
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED, done.error
        result = Annotation.model_validate_json(h.queue.read_result(job.id))
    finally:
        await h.manager.stop()
    first, second = result.speakers
    assert first.contact is not None and first.contact.id == maria
    assert (first.contact.name, first.contact.organization) == ("Мария Сидорова", "Acme")
    assert second.expected_contact is not None
    assert (second.expected_contact.id, second.expected_contact.match) == (ivan, "unverified")
    assert result.call[0].number == "+79161234567" and result.call[0].speaker == "SPEAKER_01"


async def test_job_completes_when_contacts_cannot_be_read(tmp_path) -> None:
    settings = make_settings(tmp_path)
    settings.database.url = f"sqlite:///{tmp_path}"  # a directory: no database there
    h = Harness(settings, AnnotationRunner("0" * 32))
    await h.manager.start()
    try:
        await h.wait_ready()
        job = _submit(h, caller="+79161234567")
        h.manager.wake()
        done = await h.wait_state(job.id, JobState.COMPLETED, JobState.FAILED)
        assert done.state == JobState.COMPLETED, done.error
        result = Annotation.model_validate_json(h.queue.read_result(job.id))
    finally:
        await h.manager.stop()
    assert result.speakers[0].contact is None
    assert result.call[0].number == "+79161234567" and result.call[0].contacts == []
