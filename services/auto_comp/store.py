"""The strategy set in force, and its reload: all-or-nothing, the previous version kept on failure."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.auto_comp import metrics
from services.auto_comp.domain.loader import StrategyError, StrategyLoadError, load_strategies
from services.auto_comp.domain.model import StrategySet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    version: str
    previous_version: str
    errors: tuple[StrategyError, ...] = ()


@dataclass(frozen=True)
class ReloadFailure:
    at: datetime
    serving_version: str
    errors: tuple[StrategyError, ...]


class StrategyStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._current = load_strategies(self.path)  # a service never starts on a broken set
        self._publish(self._current, None)
        self.last_failure: ReloadFailure | None = None  # cleared by the next good reload
        metrics.RELOAD_FAILED.set(0)

    @property
    def current(self) -> StrategySet:
        """An immutable snapshot: a batch decides with one version even if a reload lands meanwhile."""
        return self._current

    def reload(self) -> ReloadResult:
        with self._lock:
            previous = self._current
            try:
                loaded = load_strategies(self.path)
            except StrategyLoadError as exc:
                metrics.RELOAD_FAILED.set(1)
                metrics.RELOADS.labels("failed").inc()
                self.last_failure = ReloadFailure(datetime.now(UTC), previous.version, tuple(exc.errors))
                log.error("strategy reload failed; keeping the previous version",
                          extra={"version": previous.version, "errors": [str(e) for e in exc.errors]})
                return ReloadResult(False, previous.version, previous.version, tuple(exc.errors))
            self._current = loaded
            self.last_failure = None
            self._publish(loaded, previous)
            metrics.RELOAD_FAILED.set(0)
            metrics.RELOADS.labels("ok").inc()
            log.info("strategies reloaded", extra={"version": loaded.version, "previous": previous.version,
                                                   "strategies": len(loaded.strategies)})
            return ReloadResult(True, loaded.version, previous.version)

    @staticmethod
    def _publish(new: StrategySet, old: StrategySet | None) -> None:
        if old is not None:
            if old.version != new.version:
                metrics.CONFIG_INFO.remove(old.version)
            for s in old.strategies:
                try:
                    metrics.STRATEGY_VERSION.remove(s.id, s.mode.value)
                except KeyError:
                    pass
        metrics.CONFIG_INFO.labels(new.version).set(1)
        for s in new.strategies:
            metrics.STRATEGY_VERSION.labels(s.id, s.mode.value).set(s.version)

    def strategies(self) -> str | None:
        """/readyz warning while the last reload failed (None when the files in force are the files on disk).

        Still ready: every replica reads the same files, so not-ready would take them all out of service
        at once for a problem that leaves decisions correct (the last good set stays in force); the
        StrategyReloadFailed alert pages instead (README, Operations).
        """
        failure = self.last_failure
        if failure is None:
            return None
        errors = "; ".join(str(e) for e in failure.errors[:5])
        more = f" (and {len(failure.errors) - 5} more)" if len(failure.errors) > 5 else ""
        return (f"reload at {failure.at.isoformat(timespec='seconds')} failed, still serving version "
                f"{failure.serving_version}: {errors}{more}")
