"""A spike: a baseline of users, then many more at once for a while, then the baseline again.

Add it to the locustfile: ``locust -f loadtest/locustfile.py,loadtest/spike.py``
(headless it is then used; in the web UI pick it with ``--class-picker``).
The baseline is ``--users``, the end ``--run-time`` (none: run until
stopped); ``--spike-users`` join at ``--spike-at`` seconds for
``--spike-seconds`` (env LOCUST_SPIKE_USERS, LOCUST_SPIKE_AT,
LOCUST_SPIKE_SECONDS). Users arrive and leave within a second.
"""

from locust import LoadTestShape, events


@events.init_command_line_parser.add_listener
def _(parser):
    parser.add_argument(
        "--spike-users",
        type=int,
        default=200,
        env_var="LOCUST_SPIKE_USERS",
        help="Spike: users added during the spike (default 200)",
    )
    parser.add_argument(
        "--spike-at",
        type=float,
        default=30.0,
        env_var="LOCUST_SPIKE_AT",
        help="Spike: seconds after the start the spike begins (default 30)",
    )
    parser.add_argument(
        "--spike-seconds",
        type=float,
        default=10.0,
        env_var="LOCUST_SPIKE_SECONDS",
        help="Spike: how long the spike lasts (default 10)",
    )


class Spike(LoadTestShape):
    use_common_options = True  # --users is the baseline, --run-time the end

    def tick(self):
        options = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        if options.run_time and run_time >= options.run_time:
            return None
        baseline = options.num_users or 1
        spiking = options.spike_at <= run_time < options.spike_at + options.spike_seconds
        users = baseline + options.spike_users if spiking else baseline
        return users, max(baseline, options.spike_users)
