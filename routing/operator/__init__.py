"""The operator surface: what the runproxy processes published, read back from the
database and shown as JSON APIs, the dashboard page and Prometheus metrics. It reads
every app (it sits on top of them) and nothing of the data plane imports it."""
