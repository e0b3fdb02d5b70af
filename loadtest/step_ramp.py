"""A step ramp: +N users every M seconds up to a ceiling, then hold.

Add it to the locustfile: ``locust -f loadtest/locustfile.py,loadtest/step_ramp.py``
(headless it is then used; in the web UI pick it with ``--class-picker``).
The ceiling is ``--users``, the end ``--run-time`` (none: hold until stopped);
``--step-users`` and ``--step-seconds`` (env LOCUST_STEP_USERS,
LOCUST_STEP_SECONDS) shape the stairs. Each step arrives within a second, so
``--spawn-rate`` is not used.
"""

from locust import LoadTestShape, events

from echolab.load.locust_args import add_arguments
from echolab.settings import StepRampSettings

events.init_command_line_parser.add_listener(lambda parser: add_arguments(parser, StepRampSettings))


class StepRamp(LoadTestShape):
    use_common_options = True  # --users is the ceiling, --run-time the end

    def tick(self):
        options = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        if options.run_time and run_time >= options.run_time:
            return None
        step = max(1, options.step_users)
        users = step * (1 + int(run_time // options.step_seconds))
        return min(users, options.num_users or step), step
