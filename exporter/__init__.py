"""pss-exporter: per-group PSS, USS and RSS from /proc/PID/smaps_rollup for Prometheus."""

__version__ = "0.1.0"
