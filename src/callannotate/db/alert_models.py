"""The built-in alerts' state: one row per alert that is open (was announced as firing and
has not been announced as resolved). See :mod:`callannotate.observability.alerts.state`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from callannotate.db.models import Base
from callannotate.db.types import UtcDateTime


class AlertStateRow(Base):
    """An open alert. ``version`` grows on every change, so several watching processes update
    a row only if nobody changed it since they read it (and only one of them announces)."""

    __tablename__ = "alert_states"

    alert: Mapped[str] = mapped_column(String(100), primary_key=True)
    severity: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)  # first seen firing
    last_notified_at: Mapped[datetime] = mapped_column(UtcDateTime)  # last firing notice
    sequence: Mapped[int] = mapped_column(Integer)  # firing notices sent (1 + repeats)
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime)  # last seen firing by a watcher
    seen_by: Mapped[str] = mapped_column(String(64))  # that watcher (host, pid, random part)
    version: Mapped[int] = mapped_column(Integer)
