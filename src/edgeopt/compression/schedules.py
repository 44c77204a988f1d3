"""When training-time pruning reaches its sparsity: the target at each step. Pure Python; the
torch extra's pruning (:mod:`edgeopt.torch.pruning`) asks a schedule at every step.

A *step* is one training-mode forward pass of the prepared model (as for QAT). The masks are
recomputed at ``begin_step``, then every ``frequency`` steps up to ``end_step`` (None: for as
long as training runs), and hold between updates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import EdgeoptError


@dataclass(frozen=True)
class ConstantSparsity:
    """The target sparsity from ``begin_step`` on: ``s(t) = target`` for ``t >= begin_step``, 0 before."""

    begin_step: int = 0
    end_step: int | None = None
    frequency: int = 100

    def __post_init__(self):
        _check_steps(self.begin_step, self.end_step, self.frequency)

    def sparsity(self, step: int, target: float) -> float:
        return target if step >= self.begin_step else 0.0

    def updates_at(self, step: int) -> bool:
        return _updates_at(self, step)

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass(frozen=True)
class PolynomialDecay:
    """Sparsity rising from ``initial_sparsity`` to the target between ``begin_step`` and
    ``end_step`` (Zhu and Gupta, 2017, TFMOT's schedule):
    ``s(t) = target + (initial - target) * (1 - p) ** power`` with
    ``p = min(1, (t - begin_step) / (end_step - begin_step))``; 0 before ``begin_step``. Fast at
    first, slow near the end, when the remaining weights matter most."""

    initial_sparsity: float = 0.0
    begin_step: int = 0
    end_step: int = 1000
    frequency: int = 100
    power: float = 3.0

    def __post_init__(self):
        if self.end_step is None:
            raise EdgeoptError("PolynomialDecay needs an end_step (the step the target is reached)")
        _check_steps(self.begin_step, self.end_step, self.frequency)
        if not _number(self.initial_sparsity) or not 0.0 <= self.initial_sparsity < 1.0:
            raise EdgeoptError(f"initial_sparsity must be in [0, 1), got {self.initial_sparsity!r}")
        if not _number(self.power) or not self.power > 0:
            raise EdgeoptError(f"power must be > 0, got {self.power!r}")

    def sparsity(self, step: int, target: float) -> float:
        if step < self.begin_step:
            return 0.0
        progress = min(1.0, (step - self.begin_step) / (self.end_step - self.begin_step))
        return target + (self.initial_sparsity - target) * (1.0 - progress) ** self.power

    def updates_at(self, step: int) -> bool:
        return _updates_at(self, step)

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, **asdict(self)}


SCHEDULES = {cls.__name__: cls for cls in (ConstantSparsity, PolynomialDecay)}


def schedule_from(value):
    """A schedule from itself, its ``to_dict`` form, or None."""
    if value is None or isinstance(value, tuple(SCHEDULES.values())):
        return value
    if isinstance(value, dict) and value.get("type") in SCHEDULES:
        fields = {key: item for key, item in value.items() if key != "type"}
        try:
            return SCHEDULES[value["type"]](**fields)
        except TypeError as error:
            raise EdgeoptError(f"schedule {value['type']}: {error}") from None
    raise EdgeoptError(f"schedule must be ConstantSparsity, PolynomialDecay or None, got {value!r}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_steps(begin: int, end: int | None, frequency: int) -> None:
    for name, value in (("begin_step", begin), ("frequency", frequency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "frequency" else 0):
            raise EdgeoptError(f"{name} must be an integer >= {1 if name == 'frequency' else 0}, got {value!r}")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int) or end <= begin):
        raise EdgeoptError(f"end_step must be an integer after begin_step ({begin}), got {end!r}")


def _updates_at(schedule, step: int) -> bool:
    if step < schedule.begin_step or (schedule.end_step is not None and step > schedule.end_step):
        return False
    return (step - schedule.begin_step) % schedule.frequency == 0 or step == schedule.end_step
