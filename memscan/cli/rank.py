"""memscan rank: placeholder replaced below."""
