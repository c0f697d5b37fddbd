"""The live side: config types, the shared-memory rings, the store, the writer process, the
data-marker sidecar and the retention supervisor. The public names are ``ringtape``'s."""
