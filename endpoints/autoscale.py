"""Autoscaling for `scale_settings.type: target_utilization`, driven by the router's own
counts (endpoints.traffic), not a HorizontalPodAutoscaler: the same on the local compute
and on a cluster.

utilization = busy / (replicas x max_concurrent_requests_per_instance), where busy is the
most requests in flight or waiting at once over the polling interval. Above the target,
the deployment grows at once, to as many replicas as would bring it to the target (one
more at least); it shrinks by one only after STUDIO_SCALE_DOWN_POLLS polls in a row in
which one replica fewer would still have been at or under the target (so that it does
not flap between two sizes). Always within min_instances and max_instances. Pure: the
runner applies what it decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Decision:
    replicas: int
    below: int  # consecutive polls in which one replica fewer would have done
    utilization: float  # percent, as measured


def decide(
    replicas: int,
    busy: int,
    per_instance: int,
    target: int,
    low: int,
    high: int,
    below: int,
    polls_down: int,
) -> Decision:
    replicas = max(1, replicas)
    utilization = 100.0 * busy / (replicas * per_instance)
    if utilization > target:
        wanted = math.ceil(100.0 * busy / (per_instance * target))
        return Decision(min(high, max(replicas + 1, wanted)), 0, utilization)
    fewer = replicas - 1
    if fewer >= max(1, low) and 100.0 * busy / (fewer * per_instance) <= target:
        below += 1
        if below >= polls_down:
            return Decision(fewer, 0, utilization)
        return Decision(replicas, below, utilization)
    return Decision(max(replicas, low), 0, utilization)
