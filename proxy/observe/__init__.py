"""What the proxy reports: metrics, scrape-time collectors, status-page activity, each
request's record, and log formatting."""
