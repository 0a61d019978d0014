"""The ``mailfleet`` commands for API consumers: they talk to a running API with an API key."""
