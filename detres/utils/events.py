"""Training-time scalars: models and hooks ``put_scalar`` into the current ``EventStorage``;
the trainer's writers (log, metrics.json, TensorBoard) read them each iteration."""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Optional, Tuple

__all__ = ["EventStorage", "get_event_storage"]

_CURRENT: List["EventStorage"] = []


class EventStorage:
    """Scalars by name, as ``(value, iteration)`` histories; use as a context manager."""

    def __init__(self, start_iter: int = 0) -> None:
        self.iter = start_iter
        self._history: Dict[str, List[Tuple[float, int]]] = defaultdict(list)
        self._latest: Dict[str, Tuple[float, int]] = {}
        self.images: List[Tuple[str, object, int]] = []  # (tag, CHW uint8 array, iteration)

    def put_scalar(self, name: str, value: float) -> None:
        value = float(value)
        self._history[name].append((value, self.iter))
        self._latest[name] = (value, self.iter)

    def put_scalars(self, **values: float) -> None:
        for name, value in values.items():
            self.put_scalar(name, value)

    def put_image(self, tag: str, image_chw) -> None:
        self.images.append((tag, image_chw, self.iter))

    def latest(self) -> Dict[str, Tuple[float, int]]:
        return dict(self._latest)

    def history(self, name: str, last: Optional[int] = None) -> List[Tuple[float, int]]:
        """``(value, iteration)`` entries of ``name``, oldest first; only the ``last`` ones when given."""
        entries = self._history[name]
        return list(entries if last is None else entries[max(0, len(entries) - last):])

    def median(self, name: str, window: int = 20) -> Optional[float]:
        values = sorted(v for v, _ in self._history[name][-window:])
        return values[len(values) // 2] if values else None

    def step(self) -> None:
        self.iter += 1

    def __enter__(self) -> "EventStorage":
        _CURRENT.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _CURRENT.pop()


def get_event_storage() -> Optional[EventStorage]:
    """The innermost active storage, or ``None`` outside a training loop."""
    return _CURRENT[-1] if _CURRENT else None
