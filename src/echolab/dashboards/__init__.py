"""The Grafana dashboards: built with Grafana's Foundation SDK, read back by the tests and the run report.

* :mod:`.grafana`: the building blocks, one function per panel kind, over
  ``grafana-foundation-sdk`` (a dev dependency: only ``make dashboards``
  imports it);
* :mod:`.overview` and :mod:`.locust`: the two dashboards;
* :mod:`.build`: ``make dashboards`` writes them to ``grafana/dashboards/``,
  where provisioning reads them without a build step;
* :mod:`.panels` and :mod:`.prometheus`: the committed JSON as a reader sees
  it (panels, queries, variables) and the Prometheus API calls Grafana makes
  for it; no SDK needed, so the run report and the tests read the very files
  Grafana serves.
"""
