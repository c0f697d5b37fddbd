"""The ``ringtape`` subcommands, one module each (argument spec light, work imported late)."""
