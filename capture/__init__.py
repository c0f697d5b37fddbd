"""ringtape live side: config types, shared-memory ring, writer process, EventStore."""
