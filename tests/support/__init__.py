"""Test support: fault-injecting servers and proxies that real processes talk to."""
