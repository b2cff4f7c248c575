"""Test support: real servers (servers), the relay's processes (system), fault-injecting
proxies (faultproxy) and the fault matrix report (report). Tests import from here, never
from tests/conftest.py."""
