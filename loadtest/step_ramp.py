"""A step ramp: +N users every M seconds up to a ceiling, then hold.

Add it to the locustfile: ``locust -f loadtest/locustfile.py,loadtest/step_ramp.py``
(headless it is then used; in the web UI pick it with ``--class-picker``).
Locust's own fields keep their meaning: the ceiling is ``--users`` (the
form's number of users), each step's users start at ``--spawn-rate`` (its
ramp up), the end is ``--run-time`` (none: hold until stopped).
``--step-users`` and ``--step-seconds`` (env LOCUST_STEP_USERS,
LOCUST_STEP_SECONDS) shape the stairs: a spawn rate of at least step users
per step seconds keeps them stairs, a slower one makes a slope.
"""

from locust import LoadTestShape, events

from echolab.load.locust_args import add_arguments
from echolab.settings import StepRampSettings

events.init_command_line_parser.add_listener(lambda parser: add_arguments(parser, StepRampSettings))


class StepRamp(LoadTestShape):
    use_common_options = True  # the form's users, ramp up and run time are the shape's

    def tick(self):
        options = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        if options.run_time and run_time >= options.run_time:
            return None
        step = max(1, options.step_users)
        users = step * (1 + int(run_time // options.step_seconds))
        return min(users, options.num_users or step), options.spawn_rate
