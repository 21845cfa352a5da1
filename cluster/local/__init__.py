"""The local adapter: a supervisor that runs each revision's replicas as processes on this machine."""
