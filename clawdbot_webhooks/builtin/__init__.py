"""The default plugins. Each module is an ordinary plugin, registered like a third-party one."""
