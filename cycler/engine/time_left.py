"""How long a run still has to go: its program's plan (cyclerd.protocols.plan) read from where
its cursor stands.

Each step's span comes from the plan, so a step that ends on a voltage has the plan's bounds
(at most its duration backstop, at least nothing) and a loop that may end on a short circuit
or a CE has no upper bound without a count: the answer is then a lower bound, or unknown. The
program is walked once per run (`TimeLeft`); an estimate is then a few additions along the
loops around the current step, however long the program, so the status table may ask every
second and the bus at every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cyclerd.engine.cursor import Cursor, Phase
from cyclerd.protocols.plan import Span, command_span
from cyclerd.protocols.program import ImpedanceCommand, Loop, Node, Periodic, Program, StepCommand

NOTHING = Span(0.0, 0.0)
UNKNOWN = Span(0.0, None)


@dataclass(frozen=True)
class InStep:
    """The step the run is in as recorded (its steps row, or the bus's latest step start): inside
    an every-block it is the block's step, which the cursor (left on the interrupted step) lacks."""

    command: int
    t_start_s: float


@dataclass(frozen=True)
class _Level:
    """One list of nodes around a step: what follows the step's node in it, and the loop whose
    body it is (None: the program's body)."""

    after: Span
    loop: Loop | None


@dataclass(frozen=True)
class _Place:
    command: StepCommand
    levels: tuple[_Level, ...]  # innermost first


def less(span: Span, done_s: float) -> Span:
    """What is left of `span` once `done_s` of it has passed."""
    high = None if span.high is None else max(span.high - done_s, 0.0)
    return Span(max(span.low - done_s, 0.0), high)


def may_stop_early(loop: Loop) -> bool:
    """Whether the loop can end before its count (as the plan reads it)."""
    until = loop.until
    return (
        until.short_circuit
        or until.coulombic_efficiency_below is not None
        or until.capacity_retention_below is not None
        or until.duration_s is not None
    )


class TimeLeft:
    """The time left of runs of `program`, from a cursor; build one per run and keep it."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self._places: dict[int, _Place] = {}
        self._bodies: dict[int, Span] = {}  # loop index -> one pass of its body
        self._loops: dict[int, Span] = {}  # loop index -> the whole loop
        self._commands: dict[int, Span] = {}  # step command index -> the step, its every-block too
        self.total = self._place(program.body, (), None).capped(program.safety.duration_max_s)

    def at(self, cursor: Cursor | None, step: InStep | None = None, now_s: float | None = None) -> Span:
        """What is left at test time `now_s` (default: the cursor's own `t_s`) of a run whose
        cursor is `cursor` (None: the run has not begun) and whose latest step is `step`.

        A later `now_s` counts the time since the cursor as the step's own time, except while an
        every-block runs (the interrupted step waits then). The span's `high` is None where the
        plan cannot bound what is left (nothing is known when `low` is 0 too); the run's safety
        duration caps it.
        """
        if cursor is None:
            return self.total
        place = self._places.get(cursor.command)
        if place is None:  # a cursor of another program: nothing can be said
            return UNKNOWN
        now = cursor.t_s if now_s is None else max(now_s, cursor.t_s)
        left = self._command_left(place.command, cursor, step, now)
        for level in place.levels:
            left = left + level.after
            if level.loop is not None:
                left = self._loop_left(level.loop, cursor, left, now)
        limit = self.program.safety.duration_max_s
        return left if limit is None else left.capped(max(limit - now, 0.0))

    # -- the walk, once per program ------------------------------------------------------

    def _span_of(self, node: Node) -> Span:
        """A node's span as the plan gives it, each computed once."""
        if isinstance(node, Loop):
            return self._loop_span(node)
        span = self._commands.get(node.index)
        if span is None:
            span = self._commands[node.index] = self._command_span(node)
        return span

    def _place(self, nodes: tuple[Node, ...], outer: tuple[_Level, ...], loop: Loop | None) -> Span:
        """Note for each step command in `nodes` the levels that enclose it; the nodes' span."""
        after = NOTHING
        for node in reversed(nodes):
            levels = (_Level(after, loop), *outer)
            if isinstance(node, Loop):
                self._place(node.body, levels, node)
            else:
                self._places[node.index] = _Place(node, levels)
            after = self._span_of(node) + after
        return after

    def _loop_span(self, loop: Loop) -> Span:
        known = self._loops.get(loop.index)
        if known is not None:
            return known
        body = NOTHING
        for node in loop.body:
            body = body + self._span_of(node)
        self._bodies[loop.index] = body
        low_count = 1 if may_stop_early(loop) else (loop.count or 1)
        span = body.times(low_count, loop.count)
        # As the plan reads a loop's duration, except that a pass with no bound leaves the loop
        # with none: the runner looks at the duration only between passes.
        if loop.until.duration_s is not None and body.high is not None:
            span = span.capped(loop.until.duration_s + body.high)
        self._loops[loop.index] = span
        return span

    def _command_span(self, command: StepCommand) -> Span:
        own = command_span(command)
        periodic = command.periodic
        if periodic is None:
            return own
        block = _block(periodic)
        extra = int(periodic.at_start) + int(periodic.at_end)
        return own + _interruptions(own, periodic, periodic.interval_s, block, extra)

    # -- from a cursor -------------------------------------------------------------------

    def _command_left(self, command: StepCommand, cursor: Cursor, step: InStep | None, now: float) -> Span:
        """What is left of the step command the cursor is on, its every-block included."""
        phase = cursor.phase
        if phase is Phase.DONE:
            return NOTHING
        own, done = command_span(command), cursor.progress.t_s
        if phase is Phase.AT_START:
            done = 0.0  # the step proper has not begun (whatever progress the cursor carries)
        elif phase is Phase.STEP:
            done += now - cursor.t_s
        if isinstance(command, ImpedanceCommand) and step is not None and step.command == command.index:
            done = max(done, now - step.t_start_s)  # a spectrum streams no step progress
        periodic = command.periodic
        if periodic is None:
            return less(own, done)
        block = _block(periodic)
        closing = block if periodic.at_end else NOTHING
        if phase is Phase.AT_END:
            return _block_left(periodic, now, step)
        next_pause = cursor.pause_at_s if cursor.pause_at_s is not None else periodic.interval_s
        if phase is Phase.INTERRUPT:
            next_pause += periodic.interval_s
        rest = less(own, done) + _interruptions(own, periodic, next_pause, block, 0) + closing
        if phase is Phase.STEP:
            return rest
        return _block_left(periodic, now, step) + rest  # AT_START, INTERRUPT: a block runs

    def _loop_left(self, loop: Loop, cursor: Cursor, this_pass: Span, now: float) -> Span:
        """What is left of `loop`, `this_pass` being what is left of its pass in progress."""
        body = self._bodies[loop.index]
        position = cursor.loops.get(loop.index)
        iteration = position.iteration if position is not None else 1
        start = position.start_t_s if position is not None else now
        passes = None if loop.count is None else max(loop.count - iteration, 0)
        more = body.times(0 if may_stop_early(loop) else (passes or 0), passes)
        left = this_pass + more
        duration = loop.until.duration_s
        if duration is None or this_pass.high is None:
            return left
        # The loop ends with the first pass that ends once its duration has passed.
        if now + this_pass.low >= start + duration:
            return left.capped(this_pass.high)  # this pass is its last
        if body.high is not None:
            return left.capped(max(this_pass.high, start + duration - now + body.high))
        return left


def _block(periodic: Periodic) -> Span:
    """One run of an every-block (the plan counts each of its steps' own spans)."""
    span = NOTHING
    for sub in periodic.body:
        span = span + command_span(sub)
    return span


def _runs(own_s: float, next_pause_s: float, interval_s: float) -> int:
    """Interruptions from step time `next_pause_s` on, every `interval_s`, strictly inside a step
    of `own_s` (as the plan counts them)."""
    return max(0, math.ceil((own_s - next_pause_s) / interval_s - 1e-9))


def _interruptions(own: Span, periodic: Periodic, next_pause_s: float, block: Span, extra: int) -> Span:
    low = _runs(own.low, next_pause_s, periodic.interval_s) + extra
    high = None if own.high is None else _runs(own.high, next_pause_s, periodic.interval_s) + extra
    return block.times(low, high)


def _block_left(periodic: Periodic, now_s: float, step: InStep | None) -> Span:
    """What is left of an every-block in progress: from its step `step` on, or all of it when the
    step recorded is not one of the block's (it has not begun its first step yet)."""
    body = periodic.body
    at = next((i for i, sub in enumerate(body) if step is not None and sub.index == step.command), None)
    if at is None or step is None:
        return _block(periodic)
    left = less(command_span(body[at]), now_s - step.t_start_s)
    for sub in body[at + 1 :]:
        left = left + command_span(sub)
    return left
