"""Executors: what runs queued jobs. The API talks to :class:`~.base.Executor` only.

``local`` runs them in this process's pool of worker processes; ``external`` leaves them to
workers elsewhere (``callannotate worker``) that poll the same queue folder. A Celery executor
is one more module here; routes do not change.
"""
