"""Named circuit breakers around the service's external dependencies (pybreaker).

One :class:`Breaker` per dependency, under a fixed name (:data:`NAMES`):

* ``contacts``: the CardDAV servers, one circuit per account;
* ``callbacks``: job ``callback_url`` receivers, one circuit per host;
* ``alerts_webhook`` / ``alerts_email``: built-in alert receivers (one circuit per URL / one);
* ``events_redis``: the Redis of the event bus (``events.backend: redis``).

Each circuit is a :class:`pybreaker.CircuitBreaker`: closed, it lets calls through and counts
consecutive failures; after ``failures`` of them it opens and refuses calls at once
(:class:`CircuitOpen`) for ``reset_s`` seconds; the next call after that is a trial
(half-open) whose success closes the circuit and whose failure opens it again. What counts as
a failure is the caller's to say (``is_failure``): a 4xx answer proves the server is up, so
only "down" errors (connection refused, timeouts, 5xx) open a circuit.

Every breaker registers itself here by name, so ``/ready``, ``GET /admin/breakers`` and the
``callannotate_circuit_breakers{breaker, state}`` gauge read one place. Every dependency is
optional for the service: an open breaker degrades its feature (contacts served from the
cache, callbacks and alerts retried later, events not shared between processes) and never
fails a job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pybreaker

from callannotate.observability.metrics import CIRCUIT_BREAKERS, CIRCUIT_TRANSITIONS

log = logging.getLogger(__name__)

NAMES = ("contacts", "callbacks", "alerts_webhook", "alerts_email", "events_redis")
STATES = ("closed", "open", "half_open")
MAX_KEYS = 1000  # circuits kept per keyed breaker (closed, healthy ones are dropped first)

Clock = Callable[[], float]


class CircuitOpen(Exception):
    """The circuit is open: the dependency was not called."""

    def __init__(self, breaker: str, key: str, retry_in_s: float) -> None:
        where = f"{breaker}[{key}]" if key else breaker
        super().__init__(f"circuit breaker {where} is open; next trial in {retry_in_s:.1f} s")
        self.breaker = breaker
        self.key = key
        self.retry_in_s = retry_in_s


def _state_label(name: str) -> str:
    return name.replace("-", "_")


class _ClockStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's memory storage, with the opening time kept on ``clock`` (monotonic by
    default: a wall-clock jump never shortens or stretches an open period; tests pass a fake
    clock). pybreaker compares ``datetime.now(UTC)`` with ``opened_at + reset_timeout``, so
    ``opened_at`` is reported as *now minus the time elapsed on the clock*."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self._opened_clock: float | None = None

    @property
    def opened_at(self) -> datetime | None:
        if self._opened_clock is None:
            return None
        return datetime.now(UTC) - timedelta(seconds=self._clock() - self._opened_clock)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self._opened_clock = self._clock()

    def open_for(self) -> float:
        """Seconds since the circuit opened (0 when it never did)."""
        return 0.0 if self._opened_clock is None else self._clock() - self._opened_clock


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breaker, key: str) -> None:
        self.owner = owner
        self.key = key

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        log.info(
            "call through circuit breaker %s failed: %s",
            self.owner.name,
            f"{type(exc).__name__}: {exc}"[:300],
            extra={
                "breaker": self.owner.name,
                "key": self.key,
                "failures": cb.fail_counter,
                "error": f"{type(exc).__name__}: {exc}"[:300],
            },
        )

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        state = _state_label(new_state.name)
        CIRCUIT_TRANSITIONS.labels(self.owner.name, state).inc()
        extra = {"breaker": self.owner.name, "key": self.key, "state": state}
        if state == "open":
            log.warning("circuit breaker opened", extra={**extra, "reset_s": self.owner.reset_s})
        else:
            log.info("circuit breaker %s", state.replace("_", "-"), extra=extra)
        self.owner._changed(self.key, state)  # the storage is updated after this call


@dataclass(frozen=True)
class CircuitStatus:
    key: str
    state: str  # closed | open | half_open
    failures: int  # consecutive failures counted now
    retry_in_s: float | None  # open: seconds until the next call is a trial


@dataclass(frozen=True)
class BreakerStatus:
    name: str
    state: str  # the worst of its circuits: open > half_open > closed
    failures_to_open: int
    reset_s: float
    circuits: list[CircuitStatus] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for circuit in self.circuits:
            counts[circuit.state] += 1
        return counts


@dataclass
class _Circuit:
    breaker: pybreaker.CircuitBreaker
    storage: _ClockStorage


class Breaker:
    """A named breaker: one pybreaker circuit per key (``""`` for a single dependency)."""

    def __init__(
        self,
        name: str,
        *,
        failures: int,
        reset_s: float,
        is_failure: Callable[[BaseException], bool] = lambda exc: True,
        clock: Clock = time.monotonic,
        max_keys: int = MAX_KEYS,
        register: bool = True,
    ) -> None:
        if name not in NAMES:
            raise ValueError(f"unknown breaker name {name!r} (known: {', '.join(NAMES)})")
        self.name = name
        self.failures = failures
        self.reset_s = reset_s
        self._is_failure = is_failure
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._circuits: dict[str, _Circuit] = {}
        if register:
            _register(self)

    # -- circuits ------------------------------------------------------------------------------
    def _circuit(self, key: str) -> _Circuit:
        with self._lock:
            circuit = self._circuits.get(key)
            if circuit is None:
                self._evict()
                storage = _ClockStorage(self._clock)
                breaker = pybreaker.CircuitBreaker(
                    fail_max=self.failures,
                    reset_timeout=self.reset_s,
                    exclude=[self._not_failure],
                    listeners=[_Listener(self, key)],
                    state_storage=storage,
                    name=f"{self.name}:{key}" if key else self.name,
                    throw_new_error_on_trip=False,  # the caller sees the real error
                )
                circuit = self._circuits[key] = _Circuit(breaker, storage)
                created = True
            else:
                created = False
        if created:
            self._changed()
        return circuit

    def _not_failure(self, exc: BaseException) -> bool:
        # cancellation, exit: not the dependency's fault
        return not isinstance(exc, Exception) or not self._is_failure(exc)

    def _evict(self) -> None:
        """Keep at most ``max_keys`` circuits: forget healthy closed ones, oldest first."""
        if len(self._circuits) < self._max_keys:
            return
        for key in list(self._circuits):
            cb = self._circuits[key].breaker
            if cb.current_state == pybreaker.STATE_CLOSED and cb.fail_counter == 0:
                del self._circuits[key]
                if len(self._circuits) < self._max_keys:
                    return
        oldest = next(iter(self._circuits))  # every circuit failing: drop the oldest
        del self._circuits[oldest]

    @contextlib.contextmanager
    def guard(self, key: str = "") -> Iterator[None]:
        """Run the ``with`` body through ``key``'s circuit (also around an ``await``).

        Raises :class:`CircuitOpen` without running the body when the circuit is open; an
        exception of the body counts as a failure when ``is_failure`` says so (any other
        outcome counts as a success) and propagates unchanged.
        """
        circuit = self._circuit(key)
        try:
            calling = circuit.breaker.calling()
            calling.__enter__()
        except pybreaker.CircuitBreakerError:
            raise CircuitOpen(self.name, key, self._retry_in(circuit)) from None
        try:
            yield
        except BaseException as exc:
            if not calling.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            calling.__exit__(None, None, None)

    def call(self, func: Callable[[], Any], key: str = "") -> Any:
        with self.guard(key):
            return func()

    def _retry_in(self, circuit: _Circuit) -> float:
        return max(0.0, self.reset_s - circuit.storage.open_for())

    # -- state -----------------------------------------------------------------------------------
    def state(self, key: str = "") -> str:
        with self._lock:
            circuit = self._circuits.get(key)
        return "closed" if circuit is None else _state_label(circuit.breaker.current_state)

    def is_open(self, key: str = "") -> bool:
        return self.state(key) != "closed"

    def open_keys(self) -> list[str]:
        """Keys whose circuit is open or half-open now."""
        return [c.key for c in self.status().circuits if c.state != "closed"]

    def reset(self, key: str = "") -> None:
        """Forget ``key``'s circuit (e.g. an account reconnected with new settings)."""
        with self._lock:
            removed = self._circuits.pop(key, None)
        if removed is not None:
            self._changed()

    def status(self, changing: tuple[str, str] | None = None) -> BreakerStatus:
        with self._lock:
            items = list(self._circuits.items())
        circuits = []
        for key, circuit in items:
            state = _state_label(circuit.breaker.current_state)
            if changing is not None and changing[0] == key:
                state = changing[1]
            circuits.append(
                CircuitStatus(
                    key=key,
                    state=state,
                    failures=circuit.breaker.fail_counter,
                    retry_in_s=round(self._retry_in(circuit), 3) if state == "open" else None,
                )
            )
        states = {c.state for c in circuits}
        worst = next((s for s in ("open", "half_open") if s in states), "closed")
        return BreakerStatus(self.name, worst, self.failures, self.reset_s, circuits)

    def _changed(self, key: str = "", state: str | None = None) -> None:
        if get(self.name) is self:
            changing = (key, state) if state is not None else None
            _export(self.name, self.status(changing).counts)


# ------------------------------------------------------------------------------ registry

# name -> the live breakers of that name, oldest first (weak: a dropped service's breaker
# disappears with it)
_registry: dict[str, list[weakref.ref[Breaker]]] = {}
_registry_lock = threading.Lock()


def _export(name: str, counts: dict[str, int]) -> None:
    for state in STATES:
        CIRCUIT_BREAKERS.labels(name, state).set(counts.get(state, 0))


def _forget(name: str) -> None:
    current = get(name)  # the previous breaker of the name is reported again, if alive
    _export(name, current.status().counts if current is not None else {})


def _register(breaker: Breaker) -> None:
    """The newest live breaker of a name is the one reported (one per dependency per
    process; an older one still alive takes over when the newest is dropped)."""
    with _registry_lock:
        refs = [r for r in _registry.get(breaker.name, []) if r() is not None]
        refs.append(weakref.ref(breaker))
        _registry[breaker.name] = refs
    weakref.finalize(breaker, _forget, breaker.name)
    _export(breaker.name, breaker.status().counts)


def get(name: str) -> Breaker | None:
    """The breaker reported under ``name``: the newest one still alive."""
    with _registry_lock:
        for ref in reversed(_registry.get(name, [])):
            breaker = ref()
            if breaker is not None:
                return breaker
    return None


def breakers() -> list[Breaker]:
    """The breakers of this process, in :data:`NAMES` order."""
    found = [get(name) for name in NAMES]
    return [b for b in found if b is not None]


def statuses() -> list[BreakerStatus]:
    return [b.status() for b in breakers()]


for _name in NAMES:  # every breaker name is exported from the start (closed: none yet)
    _export(_name, {})
