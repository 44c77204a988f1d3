"""One int8 candidate = a small frozen description; the builder turns it into a model and a score.

The search (:mod:`.search`) and the fallback (:mod:`.fallback`) only see :class:`Candidate` and
:class:`~.scoring.Score`; everything that touches graphs and sessions is here, memoised so that
each candidate is screened and scored at most once (a build each; the chosen one is built once
more to be returned).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import onnx

from .. import external_data
from ..progress import StepBar
from . import weights as weight_storage
from .calibrate import Calibration, batch_size
from .graph import GraphView, tensor_dtypes
from .integer_io import make_integer_io
from .plan import QuantizationPlan, same_params
from .planner import Ranges, plan, plan_activations, round_weights
from .qdq import apply_plan
from .scoring import Score, comparable, run_session, score_outputs
from .select import Selection, excluded_nodes, select
from .simulation import SwitchedModel

logger = logging.getLogger(__name__)

#: Check samples the simulated variants are scored on (see :meth:`CandidateBuilder.simulated_score`),
#: and fewer where each sample's outputs hold at least DENSE_OUTPUT values (a detector's map: eight
#: of them are hundreds of thousands of values, half the fallback's time on PP-OCR's detectors).
SIMULATION_SAMPLES, DENSE_SIMULATION_SAMPLES, DENSE_OUTPUT = 16, 8, 4096


@dataclass(frozen=True)
class Candidate:
    """What differs between the int8 models the search compares."""

    scope: str = "all"
    method: str = "percentile"
    bias_correction: bool = True
    compensated_rounding: bool = True
    keep_float: frozenset = frozenset()

    def but(self, **changes) -> Candidate:
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        return f"{self.scope}/{self.method}"


@dataclass(frozen=True)
class Built:
    plan: QuantizationPlan
    model: onnx.ModelProto
    io_params: dict


class CandidateBuilder:
    """Builds and scores candidates for one prepared float model and one calibration."""

    def __init__(self, model: onnx.ModelProto, config, calibration: Calibration, always_float: dict[str, str],
                 dtypes: dict[str, int] | None = None):
        self.model = model
        self.config = config
        self.calibration = calibration
        #: tensors no candidate quantizes (sentinels), with the reason
        self.always_float = dict(always_float)
        self.view = GraphView(model)
        self.dtypes = tensor_dtypes(model) if dtypes is None else dtypes  # shape inference: 0.8 s on MiniLM
        self.original_weights = {init.name for init in model.graph.initializer}
        self._nodes = {node.name: node for node in model.graph.node}
        excluded = excluded_nodes(model, config.exclude)
        self.excluded_weights = {name for node in excluded for name in node.input}
        self.excluded_nodes = {node.name: "excluded by the config" for node in excluded}
        self._rounded: dict[str, dict] = {}
        self._rounding_memo: dict = {}
        self._scores: dict[Candidate, Score] = {}
        self._plan_memo: dict = {}
        self._storage_memo: dict = {}
        self._simulations: dict[Candidate, SwitchedModel] = {}
        self._simulated: dict[Candidate, Score] = {}
        self._by_switches: dict[tuple, Score] = {}
        self._screened: dict[Candidate, Score] = {}
        #: (candidate, session, io_params, outputs on the screening samples) of the lowest screened error
        self._open: tuple | None = None
        self.progress = StepBar("int8 search", unit="model")

    def selection(self, candidate: Candidate) -> Selection:
        return select(self.view, self.dtypes, integer_only=self.config.integer_only,
                      per_channel=self.config.per_channel, exclude=self.config.exclude,
                      keep_float=set(candidate.keep_float) | set(self.always_float), scope=candidate.scope)

    def _ranges(self, candidate: Candidate) -> Ranges:
        return Ranges(candidate.method, self.config.percentile, self.config.activation_type,
                      self.config.weight_range, candidate.bias_correction, self.config.shared_add_scale)

    def plan(self, candidate: Candidate, absorb: bool = True) -> QuantizationPlan:
        selection = self.selection(candidate)
        rounded = self._compensated(candidate.scope) if candidate.compensated_rounding else None
        result = plan(self.view, selection, self.calibration.observers, self._ranges(candidate), rounded,
                      self._plan_memo, absorb)
        result.kept_float.update(self.always_float)
        result.kept_float.update(self.excluded_nodes)
        result.integer_only = self.config.integer_only
        if candidate.keep_float:
            dropped = {node.name for node in self.selection(candidate.but(keep_float=frozenset())).nodes} - \
                {node.name for node in selection.nodes}
            result.float_weight_nodes = sorted(name for name in dropped if self._weights_of(name))
        return result

    def _weights_of(self, node_name: str) -> set[str]:
        return {name for name in self._nodes[node_name].input[1:] if name in self.original_weights}

    def can_compensate(self, scope: str) -> bool:
        return bool(self._compensated(scope))

    def _compensated(self, scope: str) -> dict:
        """Compensated weights, computed the first time a candidate of this scope asks for them."""
        if scope not in self._rounded:
            self._rounded[scope] = round_weights(self.view, self.selection(Candidate(scope=scope)),
                                                 self.calibration.observers, self.config.weight_range,
                                                 self._rounding_memo)
        return self._rounded[scope]

    def build(self, candidate: Candidate) -> Built:
        quantization_plan = self.plan(candidate)
        return self.build_plan(quantization_plan)

    def build_plan(self, quantization_plan: QuantizationPlan) -> Built:
        quantized = onnx.ModelProto()
        quantized.CopyFrom(self.model)
        apply_plan(quantized, quantization_plan, float_readers_read_float=not self.config.integer_only)
        io_params = make_integer_io(quantized, quantization_plan) if self.config.integer_only else {}
        skip = self.excluded_weights.union(*(self._weights_of(name) for name in quantization_plan.float_weight_nodes))
        weight_storage.store_int8(quantized, skip=skip, per_channel=self.config.per_channel,
                                  only=self.original_weights, memo=self._storage_memo)
        return Built(quantization_plan, quantized, io_params)

    def simulated_score(self, candidate: Candidate) -> Score:
        """The candidate's fidelity on the check samples through one shared :class:`SwitchedModel`
        per (scope, method, refinements): no build, no new session (the fallback's many variants)."""
        base = candidate.but(keep_float=frozenset())
        if base not in self._simulations:
            switched = SwitchedModel(self.model, self.plan(base, absorb=False), self.dtypes,
                                     float_readers_read_float=not self.config.integer_only)
            # Over protobuf's limit its branch constants would have to reach ONNX Runtime as
            # external initializers, which is untested: such variants are built for real.
            self._simulations[base] = None if external_data.too_large(switched.model) else switched
        if self._simulations[base] is None:
            return self.score(candidate)
        if candidate not in self._simulated:
            selection = self.selection(candidate)
            quantized = plan_activations(self.view, selection, self.calibration.observers, self._ranges(candidate),
                                         self._plan_memo)
            simulated = self._simulations[base].plan.activations
            if any(name not in simulated or not same_params(params, simulated[name])
                   for name, params in quantized.activations.items()):
                # A tensor whose scale was shared with one now float gets its own: build it for real.
                return self.score(candidate)
            # Variants that set the same switches score the same (a tensor only a float node reads).
            flags = self._simulations[base].switches(selection, set(quantized.activations))
            switches = (base, frozenset(name for name, flag in flags.items() if flag))
            if switches not in self._by_switches:
                feeds, reference = self._simulation_samples()
                outputs = self._simulations[base].run(feeds, selection, set(quantized.activations))
                self._by_switches[switches] = score_outputs(reference, outputs)
                self.progress.step(f"simulated cosine {self._by_switches[switches].worst_cosine:.4f}")
            self._simulated[candidate] = self._by_switches[switches]
        return self._simulated[candidate]

    def _simulation_samples(self) -> tuple[list, list]:
        """The first check samples (see SIMULATION_SAMPLES): the fallback explores many variants on
        them; what it chooses is then built and scored on all check samples."""
        feeds, reference = self.calibration.check_feeds, self.calibration.reference
        if not feeds:
            return feeds, reference
        values = sum(output.size // max(batch_size(feeds[0]), 1) for output in reference[0])
        wanted = DENSE_SIMULATION_SAMPLES if values >= DENSE_OUTPUT else SIMULATION_SAMPLES
        count = 0
        for index, feed in enumerate(feeds):
            count += batch_size(feed)
            if count >= wanted:
                return feeds[:index + 1], reference[:index + 1]
        return feeds, reference

    def screen(self, candidate: Candidate) -> Score:
        """The candidate's fidelity on the first check samples (those the simulation uses). The
        session of the lowest screened error so far stays open: scoring that candidate on every
        check sample then runs only the others."""
        if candidate not in self._screened:
            session, io_params = self._session(candidate)
            feeds, reference = self._simulation_samples()
            outputs = run_session(session, feeds, io_params)
            self._screened[candidate] = score_outputs(reference, outputs)
            self.progress.step(f"{candidate.label()} screened, cosine {self._screened[candidate].worst_cosine:.4f}")
            if self._open is None or comparable(self._screened[candidate].error) < comparable(
                    self._screened[self._open[0]].error):
                self._open = (candidate, session, io_params, outputs)
        return self._screened[candidate]

    def _session(self, candidate: Candidate):
        """A session of the candidate's model, and its integer-I/O parameters. The model is
        serialised and dropped before ONNX Runtime parses it: the copy still holds the memory of
        the float weights it replaced (protobuf frees a message's memory only with the message)."""
        from ..runtimes.onnxruntime import make_session

        built = self.build(candidate)
        io_params = built.io_params
        source = built.model if external_data.too_large(built.model) else built.model.SerializeToString()
        del built
        return make_session(source), io_params

    def score(self, candidate: Candidate) -> Score:
        """The candidate's fidelity on the check samples, memoised (a screened finalist other than
        the lowest screened one is built a second time for it)."""
        if candidate not in self._scores:
            if self._open is not None and self._open[0] == candidate:
                _, session, io_params, outputs = self._open
                self._open = None
                outputs = outputs + run_session(session, self.calibration.check_feeds[len(outputs):], io_params)
            else:
                session, io_params = self._session(candidate)
                outputs = run_session(session, self.calibration.check_feeds, io_params)
            self._scores[candidate] = score_outputs(self.calibration.reference, outputs)
            self.progress.step(f"{candidate.label()} cosine {self._scores[candidate].worst_cosine:.4f}")
            logger.debug("%s: %s", candidate, self._scores[candidate])
        return self._scores[candidate]

    def close_screening(self) -> None:
        """Drop the session :meth:`screen` kept open (its memory)."""
        self._open = None

