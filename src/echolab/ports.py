"""Every port echolab uses but the servers' native ones, in one place.

A server's own ports, natively (``make serve-NAME``, ``make locust``), are in
its catalogue entry. Everything else is here: where a server listens inside
its container, Locust's ports, Prometheus', Grafana's and the downstream
service's. The compose file
and the Kubernetes manifests are rendered from these; the files that cannot
import them (the Makefile, the Dockerfile, prometheus/prometheus.yml) are
checked against them by a test.
"""

SERVER = 9090  # every server's echo port inside its container
SERVER_METRICS = 8000  # and its /metrics
LOCUST_WEB = 8089  # the web UI of a Locust run natively, and of the stack's master
LOCUST_MASTER = 5557  # where Locust workers reach their master
LOCUST_METRICS = 9646  # a Locust process's /metrics; a host's further workers take the next free ports
PROMETHEUS = 9090  # Prometheus' own, in its container
PROMETHEUS_HOST = 9099  # Prometheus published on the host: 9090 to 9093 are the servers' native ports
GRAFANA = 3000
DOWNSTREAM = 9094  # echolab downstream, the servers' HTTP dependency: after the servers' 9090 to 9093
DOWNSTREAM_METRICS = 8004  # and its /metrics, after theirs, 8000 to 8003
POSTGRES = 5432  # the stack's PostgreSQL, PostgreSQL's own port (not published)
