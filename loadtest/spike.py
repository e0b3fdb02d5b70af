"""A spike: a baseline of users, then many more for a while, then the baseline again.

Add it to the locustfile: ``locust -f loadtest/locustfile.py,loadtest/spike.py``
(headless it is then used; in the web UI pick it with ``--class-picker``).
Locust's own fields keep their meaning: the baseline is ``--users`` (the
form's number of users), users start and stop at ``--spawn-rate`` (its ramp
up: as many as the spike's users for a spike that comes at once), the end
is ``--run-time`` (none: run until stopped). ``--spike-users`` join at
``--spike-at`` seconds for ``--spike-seconds`` (env LOCUST_SPIKE_USERS,
LOCUST_SPIKE_AT, LOCUST_SPIKE_SECONDS).
"""

from locust import LoadTestShape, events

from echolab.load.locust_args import add_arguments
from echolab.settings import SpikeSettings

events.init_command_line_parser.add_listener(lambda parser: add_arguments(parser, SpikeSettings))


class Spike(LoadTestShape):
    use_common_options = True  # the form's users, ramp up and run time are the shape's

    def tick(self):
        options = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        if options.run_time and run_time >= options.run_time:
            return None
        baseline = options.num_users or 1
        spiking = options.spike_at <= run_time < options.spike_at + options.spike_seconds
        users = baseline + options.spike_users if spiking else baseline
        return users, options.spawn_rate
