"""mailfleet bouncer: what comes back after sending changes what is sent next."""
