"""The browser chat page and the JavaScript client module, served by the gateway."""
