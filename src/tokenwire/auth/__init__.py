"""Access control: gateway API keys, limits per key or IP, and keeping secrets out of logs."""
