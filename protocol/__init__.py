"""Sans-I/O core of the Sidekick sync protocol: wire format, messages, sessions, HTTP binding."""
