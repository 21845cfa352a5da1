"""The fast HTTP/1.1 forwarding core that the queue-proxy and the activator share."""
