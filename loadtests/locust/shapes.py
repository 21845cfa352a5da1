"""The five load shapes as locust ``LoadTestShape`` classes, over the profiles of ``profiles.py``.

Each shape reads its parameters from locust's parsed options (``--zs-*`` flags or ``ZS_*``
environment variables, declared in ``locustfile.py``), turns the profile's rate at the current
second into a user count (each user sends at most ``--zs-user-rps`` requests per second), and
stops the run when the profile ends. Users start and stop within about a second of a change, so a
step or a spike is a step or a spike, not a ramp.
"""

from __future__ import annotations

from locust import LoadTestShape
from profiles import Profile, ProfileParams, make_profile, users_for


def params_from_options(options) -> ProfileParams:
    return ProfileParams(
        duration_s=options.zs_duration,
        rps=options.zs_rps,
        steps=options.zs_steps,
        step_s=options.zs_step_s,
        spike_start_s=options.zs_spike_start_s,
        spike_len_s=options.zs_spike_len_s,
        period_s=options.zs_period_s,
        min_rps=options.zs_min_rps,
        trace=options.zs_trace,
        trace_speed=options.zs_trace_speed,
        trace_scale=options.zs_trace_scale,
    )


class ZeroserveShape(LoadTestShape):
    """A profile played through locust: rate → users, with a spawn rate that reaches it in ~1 s."""

    abstract = True
    profile_name = ""

    def __init__(self) -> None:
        super().__init__()
        self._profile: Profile | None = None
        self._user_rps = 1.0

    def _setup(self) -> Profile:
        options = self.runner.environment.parsed_options
        self._user_rps = options.zs_user_rps
        self._profile = make_profile(self.profile_name, params_from_options(options))
        return self._profile

    def tick(self) -> tuple[int, float] | None:
        profile = self._profile or self._setup()
        rate = profile(self.get_run_time())
        if rate is None:
            return None
        users = users_for(rate, self._user_rps)
        # Spawn (or stop) the whole difference within a second: locust's spawn rate is users/s.
        spawn_rate = float(max(abs(users - self.get_current_user_count()), 1))
        return users, spawn_rate


class SteadyShape(ZeroserveShape):
    profile_name = "steady"


class StepShape(ZeroserveShape):
    profile_name = "step"


class SpikeShape(ZeroserveShape):
    profile_name = "spike"


class DiurnalShape(ZeroserveShape):
    profile_name = "diurnal"


class TraceShape(ZeroserveShape):
    profile_name = "trace"


SHAPES: dict[str, type[ZeroserveShape]] = {
    cls.profile_name: cls for cls in (SteadyShape, StepShape, SpikeShape, DiurnalShape, TraceShape)
}
