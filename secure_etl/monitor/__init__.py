"""Operating the platform: notifications, the health report, Prometheus metrics. No Dagster."""
