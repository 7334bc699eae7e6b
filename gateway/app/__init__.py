"""Running a gateway: configuration, wiring of servers and fetchers, and its operations."""
