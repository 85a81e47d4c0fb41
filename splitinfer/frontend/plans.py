"""Server-owned plans: the front-end keeps every plan it makes and hands the device an id for it.

A device gets its share of a plan (its partitions, the codecs, the tensors to send) and a plan id; its
Infer names the id, and the front-end runs the server part from its own copy, for the caller and device it
was made for, until it expires. Where a request goes is the cluster's to say, never the device's.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from splitinfer.errors import FailedPrecondition, InvalidArgument
from splitinfer.planner.plan import Plan
from splitinfer.v1 import plan_pb2, route_pb2

__all__ = ["MAX_PLAN_ID_CHARS", "IssuedPlan", "PlanBook", "entry_tensors"]

#: Plan ids this front-end issues are 22 characters; anything longer is not one.
MAX_PLAN_ID_CHARS = 64
#: Plans remembered per device (to match the partition timings it reports later), and devices remembered.
RECENT_PER_DEVICE = 4
#: Plan ids remembered per device after they expire, to match the request reports it sends later.
REPORTABLE_PER_DEVICE = 16
MAX_DEVICES = 10_000
REPLAN = "ask the front-end for a new plan (Plan) and send that plan's id"


def entry_tensors(route: route_pb2.Route) -> tuple[str, ...]:
    """Tensors the sender of a route must bring: every step input no step of the route produces."""
    produced = {out.tensor_name for step in route.steps for out in step.outputs}
    names = (n for step in route.steps for n in step.input_names if n not in produced)
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class IssuedPlan:
    plan_id: str
    #: The whole plan, route included: what the front-end runs.
    plan: Plan
    #: Who asked for it (see ``FrontEndServicer``): only they may use it, and only for this device.
    caller: str
    device_id: str
    entry_tensors: tuple[str, ...]
    expires_at: float
    expires_unix_ms: int

    def device_share(self) -> plan_pb2.ExecutionPlan:
        """The plan as the device sees it: no route, with its id, expiry and the tensors to send."""
        message = self.plan.to_proto()
        message.ClearField("route")
        message.plan_id = self.plan_id
        message.expires_unix_ms = self.expires_unix_ms
        message.entry_tensors.extend(self.entry_tensors)
        return message


class PlanBook:
    """Issued plans by id, each for ``ttl_s``; at most ``max_plans`` in all and ``max_per_caller`` per caller
    (the oldest go first), so that one caller asking for plans in a loop only forgets its own."""

    def __init__(
        self,
        ttl_s: float = 300.0,
        max_plans: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_per_caller: int = 4096,
    ) -> None:
        if ttl_s <= 0 or max_plans < 1 or max_per_caller < 1:
            raise ValueError("a plan book needs ttl_s > 0, max_plans >= 1 and max_per_caller >= 1")
        self.ttl_s = ttl_s
        self.max_plans = max_plans
        self.max_per_caller = max_per_caller
        self._by_caller: dict[str, deque[str]] = {}
        self._clock = clock
        self._wall_clock = wall_clock
        self._plans: OrderedDict[str, IssuedPlan] = OrderedDict()
        self._recent: OrderedDict[tuple[str, str], deque[Plan]] = OrderedDict()
        self._reportable: OrderedDict[tuple[str, str], OrderedDict[str, Plan]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._plans)

    def issue(self, plan: Plan, caller: str, device_id: str, *, keep: bool = True) -> IssuedPlan:
        """An id for ``plan``, made for ``caller`` and ``device_id``; with ``keep`` False the plan is used at
        once by the front-end itself (the OIP door) and not kept."""
        now = self._clock()
        issued = IssuedPlan(
            plan_id=secrets.token_urlsafe(16),
            plan=plan,
            caller=caller,
            device_id=device_id,
            entry_tensors=entry_tensors(plan.route) if plan.route is not None else (),
            expires_at=now + self.ttl_s,
            expires_unix_ms=int((self._wall_clock() + self.ttl_s) * 1e3),
        )
        if not keep:
            return issued
        with self._lock:
            self._expire(now)
            self._plans[issued.plan_id] = issued
            mine = self._by_caller.setdefault(caller, deque())
            mine.append(issued.plan_id)
            while len(mine) > self.max_per_caller:
                self._plans.pop(mine.popleft(), None)
            while len(self._plans) > self.max_plans:
                self._forget_oldest()
            recent = self._recent.pop((caller, device_id), None) or deque(maxlen=RECENT_PER_DEVICE)
            if not recent or recent[-1] is not plan:
                recent.append(plan)
            self._recent[(caller, device_id)] = recent
            while len(self._recent) > MAX_DEVICES:
                self._recent.popitem(last=False)
            ids = self._reportable.pop((caller, device_id), None) or OrderedDict()
            ids[issued.plan_id] = plan
            while len(ids) > REPORTABLE_PER_DEVICE:
                ids.popitem(last=False)
            self._reportable[(caller, device_id)] = ids
            while len(self._reportable) > MAX_DEVICES:
                self._reportable.popitem(last=False)
        return issued

    def reported(self, plan_id: str, caller: str, device_id: str) -> Plan | None:
        """The plan ``plan_id`` names among the last ones issued to ``caller`` for ``device_id``, expired or
        not (a device reports a request after it ran), or None: another caller's id finds nothing."""
        with self._lock:
            ids = self._reportable.get((caller, device_id))
            return ids.get(plan_id) if ids is not None else None

    def recent(self, caller: str, device_id: str) -> list[Plan]:
        """The last plans issued to ``caller`` for ``device_id``, newest first (expired ones too: a device
        reports what it ran under a plan after the plan was used)."""
        with self._lock:
            return list(reversed(self._recent.get((caller, device_id), ())))

    def _expire(self, now: float) -> None:
        # Every plan lives ttl_s from its issue, so insertion order is expiry order.
        while self._plans:
            first = next(iter(self._plans.values()))
            if first.expires_at > now:
                break
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        """Drops the oldest plan; it is also the oldest of its caller's (both are in issue order)."""
        _, issued = self._plans.popitem(last=False)
        mine = self._by_caller.get(issued.caller)
        if mine is not None:
            while mine and mine[0] not in self._plans:
                mine.popleft()
            if not mine:
                del self._by_caller[issued.caller]

    def get(self, plan_id: str, caller: str, device_id: str) -> IssuedPlan:
        """The plan ``plan_id`` names, when it was issued to ``caller`` for ``device_id`` and has not expired.

        Unknown, expired and someone else's ids are refused alike (FAILED_PRECONDITION), so that an id's
        existence tells another caller nothing.
        """
        if not plan_id:
            raise InvalidArgument(f"InferHeader needs a plan_id: {REPLAN}")
        if len(plan_id) > MAX_PLAN_ID_CHARS:
            raise InvalidArgument(f"plan_id is {len(plan_id)} characters; ids this front-end issues have at most 64")
        now = self._clock()
        with self._lock:
            self._expire(now)
            issued = self._plans.get(plan_id)
        if issued is None or issued.caller != caller or issued.device_id != device_id:
            raise FailedPrecondition(f"plan {plan_id!r} is unknown here or has expired: {REPLAN}")
        return issued
