"""Real SIP peers (SIPp, baresip, raw sockets) for integration tests.

Everything here binds to loopback only and cleans up the processes it starts.
"""
