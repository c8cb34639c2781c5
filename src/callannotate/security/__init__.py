"""Security: principals, accounts, tokens, API keys (later rate limits, audit, encryption).

* :mod:`.principal` who is calling; :mod:`.scopes` what a credential may do
* :mod:`.passwords` argon2id; :mod:`.keyring` + :mod:`.tokens` access JWTs with ``kid``;
  :mod:`.links` signed links (HMAC under a key derived from the JWT signing key)
* :mod:`.credentials` API keys, client secrets, refresh tokens (stored as digests)
* :mod:`.store` the tables; :mod:`.service` the policy; :mod:`.throttle` failed logins
* :func:`authenticate` (in :mod:`.authenticate`) the request's principal, for ``api/deps.py``
"""
