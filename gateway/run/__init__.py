"""Running the gateway: the web server, the asyncio worker, systemd notification, the sandbox."""
