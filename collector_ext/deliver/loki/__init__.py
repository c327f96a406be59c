"""The Loki fan-out: every archived record pushed to Grafana Loki with its seal attached."""
